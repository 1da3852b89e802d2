"""Distilling the shapes-mar draft on its target: the loss is the draft-vs-target epsilon gap (zero for a
copy), only the draft learns, a run resumes and exports a draft that loads and shares the target's VAE, and
a layer-skipping start copies the target's layers and head."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

from mmeff.car.model import ContinuousARModel
from mmeff.testbed.distill_mar import (
    DistillRecipe,
    DraftDistiller,
    distill_draft,
    distill_loss,
    target_pool,
    trajectory_loss,
    truncated_copy,
)
from mmeff.testbed.mar_model import ShapesMARSpec
from mmeff.testbed.train_mar import MARRecipe, draft_folder, train_mar
from mmeff.testing.car import tiny_vae

SPEC = ShapesMARSpec(target_hidden=16, target_layers=2, target_heads=2, target_kv_heads=2, target_intermediate=32,
                     target_head_width=16, target_head_depth=1, draft_hidden=8, draft_layers=1, draft_heads=2,
                     draft_kv_heads=1, draft_intermediate=16, draft_head_width=8, draft_head_depth=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny target and draft trained two steps each on one tiny VAE."""
    tmp = tmp_path_factory.mktemp("distill")
    tiny_vae(0).save_pretrained(tmp / "vae")
    recipe = MARRecipe(target_steps=2, draft_steps=2, batch=2, diffusion_batch_mul=1, vae=str(tmp / "vae"))
    target = tmp / "models" / "shapes-mar"
    train_mar(target, tmp / "run", recipe, SPEC, eval_prompts_per_category=0)
    return tmp, target, draft_folder(target)


def recipe_for(target, draft, **kw) -> DistillRecipe:
    return DistillRecipe(**{"steps": 3, "batch": 2, "diffusion_batch_mul": 1, "pool": 2, "pool_head_steps": 2,
                            "checkpoint_every": 1, "target": str(target), "draft": str(draft), **kw})


def batch(model: ContinuousARModel) -> tuple[list[str], torch.Tensor]:
    return ["a red star", "two blue circles"], torch.randn(2, model.config.num_image_tokens, model.config.token_dim)


def test_loss_is_zero_for_a_copy_of_the_target_and_positive_for_the_draft(models):
    _, target_dir, draft_dir = models
    target = ContinuousARModel.from_pretrained(target_dir)
    draft = ContinuousARModel.from_pretrained(draft_dir)
    texts, tokens = batch(target)
    with torch.no_grad():
        same = distill_loss(target, copy.deepcopy(target), texts, tokens, torch.Generator().manual_seed(0), 2, 3.0)
        other = distill_loss(target, draft, texts, tokens, torch.Generator().manual_seed(0), 2, 3.0)
    assert float(same) == pytest.approx(0.0, abs=1e-12)
    assert float(other) > 1e-4


def test_distillation_trains_the_draft_only_resumes_and_exports(models):
    tmp, target_dir, draft_dir = models
    before = {k: v.clone() for k, v in ContinuousARModel.from_pretrained(target_dir).backbone.state_dict().items()}
    start_draft = ContinuousARModel.from_pretrained(draft_dir)
    recipe = recipe_for(target_dir, draft_dir)
    stopped = DraftDistiller(tmp / "drun", replace(recipe, steps=2))
    stopped.train()  # stops at step 2: the rerun with steps=3 resumes there
    resumed = DraftDistiller(tmp / "drun", recipe)
    assert resumed.step == 2 and resumed.pool is not None and len(resumed.pool[0]) == 2
    out = distill_draft(tmp / "distilled", tmp / "drun", recipe)
    for k, v in ContinuousARModel.from_pretrained(target_dir).backbone.state_dict().items():
        assert torch.equal(v, before[k]), k  # the target is frozen
    loaded = ContinuousARModel.from_pretrained(out)
    assert loaded.vae_fingerprint() == start_draft.vae_fingerprint()
    changed = [not torch.equal(a, b) for a, b in zip(loaded.head.state_dict().values(),
                                                       start_draft.head.state_dict().values())]
    assert any(changed)
    info = json.loads((out / "training.json").read_text())["distillation"]
    assert info["recipe"]["steps"] == 3 and len(resumed.losses) == 2
    assert "_name_or_path" not in json.loads((out / "head" / "config.json").read_text())  # no path of this machine


def test_distillation_lowers_the_gap_on_a_fixed_batch(models):
    tmp, target_dir, draft_dir = models
    distiller = DraftDistiller(tmp / "lower", recipe_for(target_dir, draft_dir, steps=40, lr=3e-3))
    distiller.pool = target_pool(distiller.target, distiller.adapter, distiller.recipe)
    texts, tokens = distiller.batch(0)  # a batch of what it trains on: target samples and encoded scenes

    def gap() -> float:
        with torch.no_grad():
            return float(distill_loss(distiller.target, distiller.draft, texts, tokens,
                                      torch.Generator().manual_seed(1), 4, 3.0))

    first = gap()
    distiller.train()
    assert gap() < 0.7 * first


def test_truncated_copy_keeps_the_named_layers_and_the_head(models):
    _, target_dir, _ = models
    target = ContinuousARModel.from_pretrained(target_dir)
    draft = truncated_copy(target, [1])
    assert len(draft.backbone.layers) == 1 and draft.backbone.config.num_hidden_layers == 1
    kept, source = draft.backbone.layers[0].state_dict(), target.backbone.layers[1].state_dict()
    for k, v in kept.items():
        assert torch.equal(v, source[k]), k
    assert all(torch.equal(a, b) for a, b in zip(draft.head.state_dict().values(), target.head.state_dict().values()))
    assert draft.head is not target.head
    for bad in ([], [0, 1], [2], [0, 0]):
        with pytest.raises(ValueError, match="keep_layers"):
            truncated_copy(target, bad)


def test_trajectory_loss_is_zero_for_a_copy_and_is_the_distance_of_the_sampled_tokens(models):
    """The trajectory objective compares the tokens both heads sample from the same noise, as acceptance does:
    zero for a copy, and (for one token) the squared distance of what ``sample_head`` gives each model."""
    from mmeff.car.sampler import draw_noise, sample_head
    from mmeff.testbed.train_mar import backbone_hidden, token_conditions, training_rows

    _, target_dir, draft_dir = models
    target = ContinuousARModel.from_pretrained(target_dir)
    draft = ContinuousARModel.from_pretrained(draft_dir)
    texts, tokens = batch(target)
    n = tokens.shape[1]
    with torch.no_grad():
        same = trajectory_loss(target, copy.deepcopy(target), texts, tokens, torch.Generator().manual_seed(0),
                               5, 3.0, 4)
        other = trajectory_loss(target, draft, texts, tokens, torch.Generator().manual_seed(0), 1, 3.0, 4)
    assert float(same) == 0.0
    g = torch.Generator().manual_seed(0)
    position = int(torch.randperm(2 * n, generator=g)[0])
    start, per_step = draw_noise(1, tokens.shape[-1], 4, g, torch.device("cpu"))

    def token(model: ContinuousARModel) -> torch.Tensor:
        rows = training_rows(model.tokenizer, model.config.boi_token_id, texts + ["", ""], n)
        z = token_conditions(backbone_hidden(model.backbone, model.head, rows, torch.cat([tokens, tokens])),
                             rows["input_ids"].shape[1], n).reshape(2, 2 * n, -1)
        with torch.no_grad():
            return sample_head(model.head, model.scheduler, z[:, position], 4, 3.0, start, per_step).sample

    assert float(other) == pytest.approx(float(((token(draft) - token(target)) ** 2).mean()), rel=1e-5)


def test_trajectory_objective_lowers_the_distance_of_sampled_tokens(models):
    tmp, target_dir, draft_dir = models
    recipe = recipe_for(target_dir, draft_dir, steps=30, lr=3e-3, objective="trajectory", trajectory_tokens=16)
    distiller = DraftDistiller(tmp / "trajectory", recipe)
    distiller.pool = target_pool(distiller.target, distiller.adapter, distiller.recipe)
    texts, tokens = distiller.batch(0)

    def gap() -> float:
        with torch.no_grad():
            return float(trajectory_loss(distiller.target, distiller.draft, texts, tokens,
                                         torch.Generator().manual_seed(1), 32, 3.0, recipe.pool_head_steps))

    first = gap()
    distiller.train()
    assert gap() < 0.7 * first


def test_an_unknown_objective_is_refused():
    with pytest.raises(ValueError, match=r"objective must be one of \['epsilon', 'trajectory', 'both'\]"):
        DistillRecipe(objective="x0")
