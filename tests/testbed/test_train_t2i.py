"""The shapes-sd and shapes-clip recipes run end to end (a few steps), resume, and save loadable models."""

from __future__ import annotations

import json

import open_clip
import torch
from diffusers import StableDiffusionPipeline

import mmeff
from mmeff.testbed.train_clip import ClipRecipe, ClipTrainer, train_clip
from mmeff.testbed.train_sd import SDRecipe, SDTrainer, train_sd


def test_sd_recipe_saves_a_loadable_pipeline_and_resumes(tmp_path):
    recipe = SDRecipe(vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, checkpoint_every=1)
    out = train_sd(tmp_path / "out", tmp_path / "run", recipe, eval_prompts_per_category=1)
    info = json.loads((out / "training.json").read_text())
    assert {"oracle_1_steps", "oracle_2_steps", "oracle_4_steps"} <= set(info["metrics"])
    assert (out / "training_loss.png").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(out)
    image = pipe("a red star", num_inference_steps=1, guidance_scale=1.0, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    assert mmeff.load(out).adapter.key == "diffusers_t2i"
    longer = SDTrainer(tmp_path / "run", SDRecipe(vae_steps=2, vae_batch=4, unet_steps=3, unet_batch=4))
    assert (longer.stage, longer.step) == ("done", 2)  # picks up where the first run stopped
    assert longer.vae.config.scaling_factor == info["scaling_factor"]


def test_clip_recipe_saves_an_open_clip_local_dir_model(tmp_path):
    out = train_clip(tmp_path / "out", tmp_path / "run", ClipRecipe(steps=2, batch=8, checkpoint_every=1))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    with torch.no_grad():
        text = model.encode_text(tokenizer(["a red star", "two circles"]))
        image = model.encode_image(torch.zeros(1, 3, 32, 32))
    assert text.shape == (2, 64) and image.shape == (1, 64)
    info = json.loads((out / "training.json").read_text())
    assert 0 <= info["caption_vs_corrupted_accuracy"]["overall"] <= 1
    assert ClipTrainer(tmp_path / "run", ClipRecipe(steps=2, batch=8)).step == 2
