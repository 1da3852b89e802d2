"""The shapes-ar recipe runs both stages (a few steps), resumes mid-stage, and saves a folder standard classes load."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import VQModel
from transformers import AutoTokenizer, LlamaForCausalLM

import mmeff.testbed.train_ar as train_ar_module
from mmeff.ar.model import ARImageModel
from mmeff.testbed.ar_model import ShapesARSpec, build_lm, build_tokenizer, build_vq, model_config
from mmeff.testbed.train_ar import (
    IGNORE,
    ARRecipe,
    ARTrainer,
    prompt_batch,
    quantize,
    restart_dead_codes,
    train_ar,
    training_rows,
    vq_codes,
)

RECIPE = ARRecipe(vq_steps=2, vq_batch=4, ar_steps=4, ar_batch=4, checkpoint_every=1, heldout_batch=8,
                  restart_every=1, caption_dropout=0.5)


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run killed at AR step 2, then rerun to the end; and the same recipe without the interruption."""
    tmp = tmp_path_factory.mktemp("ar")
    with pytest.MonkeyPatch.context() as mp:
        def interrupting(step: int, batch: int, seed: int, *object_scale: float):
            if seed == RECIPE.seed + 1 and step == 2:
                raise Interrupted
            return prompt_batch(step, batch, seed, *object_scale)

        mp.setattr(train_ar_module, "prompt_batch", interrupting)
        with pytest.raises(Interrupted):
            train_ar(tmp / "out", tmp / "run", RECIPE, eval_prompts_per_category=0)
    stopped = ARTrainer(tmp / "run", RECIPE)
    stopped_at = (stopped.stage, stopped.step, len(stopped.losses["vq"]), len(stopped.losses["ar"]))
    out = train_ar(tmp / "out", tmp / "run", RECIPE, eval_prompts_per_category=0)
    straight = ARTrainer(tmp / "straight", RECIPE)
    straight.train_vq()
    straight.train_lm()
    return {"out": out, "run": tmp / "run", "stopped_at": stopped_at, "straight": straight}


def test_resume_continues_where_the_run_stopped(run):
    assert run["stopped_at"] == ("ar", 2, 2, 2)
    resumed = ARTrainer(run["run"], RECIPE)
    assert (resumed.stage, resumed.step) == ("done", 4)
    assert len(resumed.losses["vq"]) == 2 and len(resumed.losses["ar"]) == 4  # neither stage restarted
    assert resumed.losses == run["straight"].losses
    for name, value in run["straight"].lm.state_dict().items():
        torch.testing.assert_close(resumed.lm.state_dict()[name], value, rtol=0, atol=0)


def test_export_loads_as_ar_image_model_and_with_standard_classes(run):
    out = run["out"]
    info = json.loads((out / "training.json").read_text())
    assert {"recipe", "spec", "final_loss", "codebook", "metrics", "training_minutes"} <= set(info)
    assert info["codebook"]["codebook_size"] == 512 and info["metrics"] == {}
    assert (out / "training_loss.png").is_file()
    model = ARImageModel.from_pretrained(out)
    lm, vq = LlamaForCausalLM.from_pretrained(out / "lm"), VQModel.from_pretrained(out / "vq")
    tokenizer = AutoTokenizer.from_pretrained(out / "lm")
    assert model.config.code_offset == len(tokenizer) and lm.config.vocab_size == len(tokenizer) + 512
    assert vq.config.num_vq_embeddings == model.config.codebook_size == 512
    assert model.config.null_caption  # trained with caption dropout
    assert tokenizer("").input_ids == [tokenizer.bos_token_id]
    assert tokenizer("a red star <boi>").input_ids[-1] == model.config.boi_token_id  # one id, survives reload
    images = model.decode_codes(torch.zeros(1, 64, dtype=torch.long))
    assert images.shape == (1, 3, 32, 32)


def test_a_trained_tokenizer_skips_stage_vq_and_stays_frozen(run, tmp_path):
    """``vq=`` an exported vq/ folder: the LM trains on it from step 0, and the export carries it unchanged."""
    folder = run["out"] / "vq"
    recipe = ARRecipe(**{**RECIPE.__dict__, "vq": str(folder), "ar_steps": 2})
    trainer = ARTrainer(tmp_path / "run", recipe)
    assert (trainer.stage, trainer.step) == ("ar", 0)
    out = train_ar(tmp_path / "out", tmp_path / "run", recipe, eval_prompts_per_category=0)
    before, after = VQModel.from_pretrained(folder).state_dict(), VQModel.from_pretrained(out / "vq").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "_name_or_path" not in json.loads((out / "vq" / "config.json").read_text())  # no path of this machine
    losses = json.loads((out / "training.json").read_text())["final_loss"]
    assert losses["vq"] == 0.0 and losses["ar"] > 0  # no VQ step was taken


def test_a_tokenizer_of_another_spec_is_refused_before_training(run, tmp_path):
    recipe = ARRecipe(**{**RECIPE.__dict__, "vq": str(run["out"] / "vq")})
    with pytest.raises(ValueError, match=r"does not match the spec.*num_vq_embeddings.*\(512, 128\)"):
        ARTrainer(tmp_path / "run", recipe, ShapesARSpec(codebook_size=128))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_rows_match_the_inference_prompt_and_put_the_loss_on_codes_only():
    spec, tokenizer = ShapesARSpec(), build_tokenizer()
    config = model_config(spec, tokenizer)
    codes = torch.randint(0, spec.codebook_size, (4, 64))
    rows = training_rows(tokenizer, config, ["a red star left of a circle", "two circles", "", ""], codes)
    ids, labels, mask, pos = rows["input_ids"], rows["labels"], rows["attention_mask"], rows["position_ids"]
    width = ids.shape[1] - 64
    is_code = labels != IGNORE
    assert is_code[:, width:].all() and not is_code[:, :width].any()
    assert torch.equal(labels[:, width:], ids[:, width:]) and torch.equal(ids[:, width:], codes + config.code_offset)
    assert (ids[:, :width] < config.code_offset).all()
    assert ids[2, width - 2 : width].tolist() == [tokenizer.bos_token_id, config.boi_token_id]  # null caption
    for row in range(4):
        first = int(mask[row].argmax())
        assert pos[row, first:].tolist() == list(range(ids.shape[1] - first))  # padding shifts nothing
    model = ARImageModel(build_lm(spec, tokenizer), build_vq(spec), tokenizer, config)
    prompt, prompt_mask = model.prompt_ids(["a red star left of a circle", "two circles"], unconditional=True)
    assert torch.equal(prompt, ids[:, :width]) and torch.equal(prompt_mask, mask[:, :width])


def test_trainer_rows_hold_vq_codes_and_drop_captions(tmp_path):
    trainer = ARTrainer(tmp_path, ARRecipe(caption_dropout=1.0))
    texts, images = prompt_batch(0, 3, 0)
    rows = trainer.rows(texts, images, step=0)
    offset = trainer.config.code_offset
    codes = rows["input_ids"][rows["labels"] != IGNORE]
    assert ((codes >= offset) & (codes < offset + 512)).all() and codes.numel() == 3 * 64
    assert rows["input_ids"].shape[1] == 2 + 64  # every caption dropped: [bos, <boi>] + codes
    assert torch.equal(rows["input_ids"][:, 2:] - offset, vq_codes(trainer.vq, images))


def test_dead_code_restart_replaces_unused_entries():
    vq = build_vq(ShapesARSpec(codebook_size=128))
    weight = vq.quantize.embedding.weight
    with torch.no_grad():
        weight.fill_(100.0)
        weight[0] = 0.0  # every encoder output is nearest to code 0
    _, images = prompt_batch(0, 2, 0)
    z = vq.encode(images).latents.detach()
    _, _, codes = quantize(vq, z, 0.25)
    usage = torch.bincount(codes.flatten(), minlength=128)
    assert usage.nonzero().flatten().tolist() == [0]
    dead = restart_dead_codes(vq, usage, z, torch.Generator().manual_seed(0))
    assert dead.tolist() == list(range(1, 128))
    assert torch.equal(weight[0], torch.zeros(16))
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 16)
    assert (weight[1:, None].detach() == vectors[None]).all(-1).any(-1).all()  # each is an encoder output
    _, _, after = quantize(vq, z, 0.25)
    assert after.unique().numel() > 1


def test_trainer_restart_clears_adam_moments_of_reseeded_rows(tmp_path):
    trainer = ARTrainer(tmp_path, ARRecipe(vq_batch=2))
    weight = trainer.vq.quantize.embedding.weight
    weight.grad = torch.ones_like(weight)
    trainer.optimizer.step()
    trainer.usage[:5] = 1
    trainer._restart(trainer.vq.encode(prompt_batch(0, 2, 0)[1]).latents, step=100)
    moments = trainer.optimizer.state[weight]
    assert (moments["exp_avg"][5:] == 0).all() and (moments["exp_avg"][:5] != 0).all()
    assert trainer.restarted == 512 - 5 and trainer.usage.sum() == 0


def test_a_trained_lm_starts_stage_ar_from_its_weights_and_tokenizer(run, tmp_path):
    """``lm=`` an exported shapes-ar: stage ar starts from its LM (step 0 equals it) on its own vq/."""
    recipe = ARRecipe(**{**RECIPE.__dict__, "lm": str(run["out"]), "ar_steps": 2})
    trainer = ARTrainer(tmp_path / "run", recipe)
    assert (trainer.stage, trainer.step) == ("ar", 0)
    exported = LlamaForCausalLM.from_pretrained(run["out"] / "lm").state_dict()
    assert all(torch.equal(trainer.lm.state_dict()[k], v) for k, v in exported.items())
    fresh = ARTrainer(tmp_path / "fresh", ARRecipe(**{**RECIPE.__dict__, "vq": str(run["out"] / "vq")}))
    assert not all(torch.equal(fresh.lm.state_dict()[k], v) for k, v in exported.items())
    out = train_ar(tmp_path / "out", tmp_path / "run", recipe, eval_prompts_per_category=0)
    before = VQModel.from_pretrained(run["out"] / "vq").state_dict()
    after = VQModel.from_pretrained(out / "vq").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = LlamaForCausalLM.from_pretrained(out / "lm").state_dict()
    assert not all(torch.equal(moved[k], v) for k, v in exported.items())  # it trained on


def test_an_lm_of_another_spec_is_refused_before_training(run, tmp_path):
    recipe = ARRecipe(**{**RECIPE.__dict__, "lm": str(run["out"]), "vq": str(run["out"] / "vq")})
    with pytest.raises(ValueError, match=r"recipe lm=.*does not match the spec.*hidden_size"):
        ARTrainer(tmp_path / "run", recipe, ShapesARSpec(lm_hidden=64, lm_heads=2))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
