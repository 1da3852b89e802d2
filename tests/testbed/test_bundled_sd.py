"""The bundled shapes-sd: loads like a hub checkpoint, draws scenes the oracle recognises, and ReNO
raises its shapes_clip reward."""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

import mmeff
from mmeff.plugins.reno import RenoConfig
from mmeff.testbed.assets import SHAPES_SD, SHAPES_SD_CALL, SHAPES_SD_RENO
from mmeff.testbed.t2i_eval import to_uint8
from mmeff.testbed.t2i_prompts import parse_prompt, score_image

#: single objects, the category this small model does best (0.92 on the evaluation prompts)
PROMPTS = ["a star", "a circle", "a square", "a triangle", "a hexagon", "a cross"] * 2


def _images(pipe, prompts, **kw):
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    return pipe(prompts, generator=gens, output_type="np", **{**SHAPES_SD_CALL, **kw}).images


def test_loads_with_from_pretrained_and_draws_recognisable_scenes():
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_SD)
    pipe.set_progress_bar_config(disable=True)
    images = _images(pipe, PROMPTS)
    assert images.shape == (len(PROMPTS), 32, 32, 3)
    hits = [score_image(parse_prompt(p), img) for p, img in zip(PROMPTS, to_uint8(images))]
    assert sum(hits) >= 7, hits  # measured: 9 of 12 (seeds 0-11); the previous model drew 4


def test_reno_raises_the_shapes_clip_reward():
    pipe = mmeff.load(SHAPES_SD)
    plain = _images(pipe, PROMPTS[:2])
    pipe.add_plugin("reno", rewards={"shapes_clip": 1.0}, iterations=6)
    optimised = _images(pipe, PROMPTS[:2])
    stats = pipe.last_stats["reno"]
    assert all(b > i for b, i in zip(stats["best_reward"], stats["initial_reward"]))
    assert not np.array_equal(plain, optimised)


def test_reno_lr_for_shapes_sd_keeps_the_papers_step_relative_to_its_noise():
    """SHAPES_SD_RENO's lr is ReNO's scaled by the noise norm: sqrt(latent size / SD-Turbo's 4 x 64 x 64)."""
    unet = UNet2DConditionModel.load_config(SHAPES_SD, subfolder="unet")  # the config alone, no weights
    latent = unet["in_channels"] * unet["sample_size"] ** 2
    assert latent == 256
    assert SHAPES_SD_RENO["lr"] == RenoConfig.lr * math.sqrt(latent / (4 * 64 * 64))


def test_recipe_defaults_are_the_bundled_models_recipe():
    """``mmeff testbed train sd`` with no options retrains what ships (the autoencoder aside: it was reused)."""
    import dataclasses
    import json

    from mmeff.testbed.sd_model import ShapesSDSpec
    from mmeff.testbed.train_sd import SDRecipe

    info = json.loads((SHAPES_SD / "training.json").read_text())
    bookkeeping = {"checkpoint_every", "workers", "vae", "unet"}  # how the run was kept or started, not what it learnt
    defaults = {k: v for k, v in dataclasses.asdict(SDRecipe()).items() if k not in bookkeeping}
    assert defaults == {k: v for k, v in info["recipe"].items() if k not in bookkeeping}
    assert info["spec"] == json.loads(json.dumps(dataclasses.asdict(ShapesSDSpec())))
