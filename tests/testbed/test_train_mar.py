"""The shapes-mar recipe: target then draft (a few steps, tiny sizes), resume mid-stage, a shared-VAE export
that standard classes load, and the row / index arithmetic that puts the loss on image tokens only."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from transformers import AutoModel, AutoTokenizer, LlamaModel

import mmeff
import mmeff.testbed.train_mar as train_mar_module
from mmeff.car.head import DiffusionHead
from mmeff.car.loop import ContinuousSession
from mmeff.car.model import ContinuousARModel
from mmeff.testbed.ar_model import boi_token_id
from mmeff.testbed.mar_model import (
    ShapesMARSpec,
    assemble,
    build_backbone,
    build_head,
    build_scheduler,
    build_tokenizer,
)
from mmeff.testbed.train_mar import (
    MARRecipe,
    MARTrainer,
    backbone_hidden,
    diffusion_loss,
    draft_folder,
    predicting_columns,
    prompt_batch,
    token_conditions,
    train_mar,
    training_rows,
)
from mmeff.testing.car import tiny_vae

TINY = ShapesMARSpec(target_hidden=16, target_layers=1, target_heads=2, target_kv_heads=2, target_intermediate=32,
                     target_head_width=16, target_head_depth=1, draft_hidden=8, draft_layers=1, draft_heads=2,
                     draft_kv_heads=1, draft_intermediate=16, draft_head_width=8, draft_head_depth=1)


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """The tiny VAE (32 px -> 8 x 8 x 4, as the bundled one) in a folder of its own, as shapes-sd/vae is."""
    folder = tmp_path_factory.mktemp("shared") / "vae"
    tiny_vae(0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def recipe(vae_dir):
    return MARRecipe(target_steps=3, draft_steps=3, batch=2, checkpoint_every=1, caption_dropout=0.5,
                     diffusion_batch_mul=2, ema_decay=0.9, vae=str(vae_dir))


@pytest.fixture(scope="module")
def run(tmp_path_factory, recipe):
    """One run killed at draft step 1, then rerun to the end; and the same recipe without the interruption."""
    tmp = tmp_path_factory.mktemp("mar")
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        def interrupting(step: int, batch: int, seed: int, *object_scale: float):
            calls.append(step)
            if len(calls) == recipe.target_steps + 2:  # the target's 3 batches, then the draft's 0 and 1
                raise Interrupted
            return prompt_batch(step, batch, seed, *object_scale)

        mp.setattr(train_mar_module, "prompt_batch", interrupting)
        with pytest.raises(Interrupted):
            train_mar(tmp / "models" / "shapes-mar", tmp / "run", recipe, TINY, eval_prompts_per_category=0)
    stopped = MARTrainer(tmp / "run", recipe, TINY)
    stopped_at = (stopped.stage, stopped.step, len(stopped.losses["target"]), len(stopped.losses["draft"]))
    folders = train_mar(tmp / "models" / "shapes-mar", tmp / "run", recipe, TINY, eval_prompts_per_category=0)
    straight = MARTrainer(tmp / "straight", recipe, TINY)
    straight.train()
    return {"folders": folders, "run": tmp / "run", "stopped_at": stopped_at, "straight": straight,
            "calls": calls}


def test_resume_continues_where_the_run_stopped(run, recipe):
    assert run["calls"] == [0, 1, 2, 0, 1]  # both models see the same batches
    assert run["stopped_at"] == ("draft", 1, 3, 1)
    resumed = MARTrainer(run["run"], recipe, TINY)
    assert (resumed.stage, resumed.step) == ("done", 3)
    assert len(resumed.losses["target"]) == 3 and len(resumed.losses["draft"]) == 3  # neither stage restarted
    assert resumed.losses == run["straight"].losses
    for name, module in run["straight"].modules().items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(resumed.modules()[name].state_dict()[key], value, rtol=0, atol=0)
    for mine, theirs in zip(resumed.ema.shadow_params, run["straight"].ema.shadow_params):  # the draft's average
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert set(resumed.stage_seconds) == {"target", "draft"} and resumed.stage_seconds["draft"] > 0


def test_export_loads_with_standard_classes_and_shares_one_vae(run, vae_dir):
    target_dir, draft_dir = run["folders"]["target"], run["folders"]["draft"]
    assert draft_dir == draft_folder(target_dir) and draft_dir.name == "shapes-mar-small"
    models = {}
    for which, folder in run["folders"].items():
        assert {p.name for p in folder.iterdir() if p.is_dir()} == {"backbone", "head", "scheduler"}  # no VAE copy
        info = json.loads((folder / "training.json").read_text())
        assert info["model"] == which and info["metrics"] == {} and (folder / "training_loss.png").is_file()
        assert {"recipe", "spec", "device", "training_minutes", "final_loss", "config"} <= set(info)
        assert set(info["training_minutes"]) == set(info["final_loss"]) == {"target", "draft"}
        model = ContinuousARModel.from_pretrained(folder)
        assert (folder / model.config.vae).resolve() == vae_dir.resolve()
        assert model.config.grid == (8, 8) and model.config.token_dim == 4 and model.config.null_caption
        backbone = AutoModel.from_pretrained(folder / "backbone")
        assert isinstance(backbone, LlamaModel) and isinstance(LlamaModel.from_pretrained(folder / "backbone"),
                                                                 LlamaModel)
        head = DiffusionHead.from_pretrained(folder / "head")
        assert head.config.cond_dim == backbone.config.hidden_size and head.config.token_dim == 4
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        assert scheduler.config.beta_schedule == "squaredcos_cap_v2" and scheduler.config.prediction_type == "epsilon"
        assert scheduler.config.num_train_timesteps == 1000
        tokenizer = AutoTokenizer.from_pretrained(folder / "backbone")
        assert tokenizer("").input_ids == [tokenizer.bos_token_id]
        assert tokenizer("a red star <boi>").input_ids[-1] == model.config.boi_token_id
        models[which] = model
    target, draft = models["target"], models["draft"]
    assert target.backbone.config.hidden_size == TINY.target_hidden and draft.backbone.config.hidden_size == 8
    assert target.vae_fingerprint() == draft.vae_fingerprint()
    assert target.vae_fingerprint() == ContinuousARModel(
        draft.backbone, draft.head, AutoencoderKL.from_pretrained(vae_dir), draft.scheduler, draft.tokenizer,
        draft.config).vae_fingerprint()
    trained = run["straight"].model("target")
    torch.testing.assert_close(target.head.state_dict()["out.weight"], trained.head.state_dict()["out.weight"].cpu())
    images = mmeff.wrap(draft).generate_images(["a red circle"], seed=0, output_type="pt", diffusion_steps=2)
    assert images.shape == (1, 3, 32, 32)


def _weights(model: ContinuousARModel) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v for part in ("backbone", "head") for k, v in getattr(model, part).state_dict().items()}


def test_a_trained_target_starts_stage_target_from_its_weights(run, recipe, tmp_path):
    """``target=`` an exported shapes-mar: stage target starts from its backbone and head (step 0 equals it)."""
    exported = _weights(ContinuousARModel.from_pretrained(run["folders"]["target"]))
    warm = replace(recipe, target=str(run["folders"]["target"]), target_steps=2, draft_steps=0, ema_decay=0.0)
    trainer = MARTrainer(tmp_path / "run", warm, TINY)
    assert (trainer.stage, trainer.step) == ("target", 0)
    assert all(torch.equal(_weights(trainer.models["target"])[k], v) for k, v in exported.items())
    fresh = MARTrainer(tmp_path / "fresh", replace(warm, target=""), TINY)
    assert not all(torch.equal(_weights(fresh.models["target"])[k], v) for k, v in exported.items())
    folders = train_mar(tmp_path / "out" / "shapes-mar", tmp_path / "run", warm, TINY, eval_prompts_per_category=0)
    moved = _weights(ContinuousARModel.from_pretrained(folders["target"]))
    assert not all(torch.equal(moved[k], v) for k, v in exported.items())  # it trained on
    assert json.loads((folders["target"] / "training.json").read_text())["recipe"]["target"] == warm.target


def test_a_target_of_another_spec_is_refused_before_training(run, recipe, tmp_path):
    warm = replace(recipe, target=str(run["folders"]["target"]))
    with pytest.raises(ValueError, match=r"recipe target=.*\(backbone\) does not match the spec.*embed_tokens"):
        MARTrainer(tmp_path / "run", warm, replace(TINY, target_hidden=32))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def _tiny_model(vae=None) -> ContinuousARModel:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    head = build_head(TINY, "target")
    with torch.no_grad():  # zero-initialised output and adaLN gates would hide the head's dependence on z
        for weight in (head.out.weight, *(block.modulation[1].weight for block in head.blocks)):
            weight.normal_(0, 0.5)
    return assemble(TINY, tokenizer, build_backbone(TINY, "target", tokenizer).eval(), head.eval(),
                    vae if vae is not None else tiny_vae(0), build_scheduler(TINY))


def test_rows_are_the_inference_prefix_and_token_i_reads_the_state_before_it():
    model = _tiny_model()
    tokenizer, boi = model.tokenizer, boi_token_id(model.tokenizer)
    texts, n = ["a red star left of a blue circle", "two circles", ""], 4
    rows = training_rows(tokenizer, boi, texts, n)
    ids, mask, pos = rows["input_ids"], rows["attention_mask"], rows["position_ids"]
    width = ids.shape[1]
    assert mask.shape == pos.shape == (3, width + n - 1)  # the last token is predicted, never fed
    assert (ids[:, -1] == boi).all() and ids[2, -2:].tolist() == [tokenizer.bos_token_id, boi]  # null caption
    assert predicting_columns(width, n).tolist() == [width - 1, width, width + 1, width + 2]
    for row in range(3):
        first = int(mask[row].argmax())
        assert pos[row, first:].tolist() == list(range(width + n - 1 - first))  # padding shifts nothing
    prompt, prompt_mask = model.prompt_ids(texts[:2], unconditional=True)
    assert torch.equal(prompt[:3], ids[:, -prompt.shape[1] :]) and torch.equal(prompt_mask[:3], mask[:, :width])

    tokens = torch.randn(3, n, 4)
    with torch.no_grad():
        z = token_conditions(backbone_hidden(model.backbone, model.head, rows, tokens), width, n)
        assert z.shape == (3, n, TINY.target_hidden)
        for j in range(n):  # change token j: conditions 0..j stay, condition j + 1 moves
            other = tokens.clone()
            other[:, j] += 1.0
            moved = token_conditions(backbone_hidden(model.backbone, model.head, rows, other), width, n)
            torch.testing.assert_close(moved[:, : j + 1], z[:, : j + 1])
            if j + 1 < n:
                assert (moved[:, j + 1] - z[:, j + 1]).abs().amax(-1).min() > 1e-4
        # the same hidden states as decoding: <boi> predicts token 0, token i's slot predicts token i + 1
        session = ContinuousSession(mmeff.wrap(model).adapter, texts[:2], guidance_scale=None)
        torch.testing.assert_close(session.first_logits, z[:2, 0], atol=1e-5, rtol=1e-4)
        for i in range(n - 1):
            torch.testing.assert_close(session.forward(tokens[:2, i : i + 1], [i])[:, -1], z[:2, i + 1],
                                       atol=1e-5, rtol=1e-4)
        alone = training_rows(tokenizer, boi, ["two circles"], n)  # no padding: the same states
        z_alone = token_conditions(backbone_hidden(model.backbone, model.head, alone, tokens[1:2]),
                                   alone["input_ids"].shape[1], n)
        torch.testing.assert_close(z_alone, z[1:2], atol=1e-5, rtol=1e-4)


def test_loss_reaches_only_token_positions_with_mul_draws_per_token():
    model = _tiny_model()
    texts, n, mul = ["a red star left of a blue circle", ""], 5, 3
    rows = training_rows(model.tokenizer, boi_token_id(model.tokenizer), texts, n)
    width = rows["input_ids"].shape[1]
    tokens = torch.randn(2, n, 4)
    hidden = backbone_hidden(model.backbone, model.head, rows, tokens)
    hidden.retain_grad()
    seen = []
    model.head.register_forward_hook(lambda module, args, out: seen.append(args))
    loss = diffusion_loss(model.head, model.scheduler, tokens, token_conditions(hidden, width, n),
                          torch.Generator().manual_seed(0), mul)
    loss.backward()
    per_column = hidden.grad.abs().sum(-1)
    assert (per_column[:, : width - 1] == 0).all()  # caption and padding columns get no loss
    assert (per_column[:, width - 1 :] > 0).all()  # <boi> and every fed token's column do
    (x_t, t, z), = seen
    assert x_t.shape == (mul * 2 * n, 4) and z.shape == (mul * 2 * n, TINY.target_hidden)
    assert ((t >= 0) & (t < 1000)).all() and len(t.unique()) > 2 * n  # independent timesteps per draw
    torch.testing.assert_close(z[: 2 * n], z[2 * n : 4 * n])  # each token's state, repeated per draw


def test_trainer_drops_captions_and_encodes_scaled_latent_means(tmp_path, recipe):
    trainer = MARTrainer(tmp_path, replace(recipe, caption_dropout=1.0), TINY)
    texts, images = prompt_batch(0, 2, 0)
    seen = []
    trainer.models["target"].backbone.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    trainer.loss("target", texts, images, step=0)
    assert seen[0]["attention_mask"].shape == (2, 2 + 63)  # every caption dropped: [bos, <boi>] + 63 tokens
    vae = trainer.vae
    expected = (vae.encode(images).latent_dist.mean * vae.config.scaling_factor).flatten(2).transpose(1, 2)
    torch.testing.assert_close(trainer.models["target"].encode_images(images), expected)
    with pytest.raises(ValueError, match="latents"):
        MARTrainer(tmp_path / "other", recipe, replace(TINY, grid=(4, 4)))
