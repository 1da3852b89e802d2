"""The bundled shapes-mar / shapes-mar-small pair: standard classes, one shared VAE, and the plugins run on it."""

from __future__ import annotations

import json

from diffusers import AutoencoderKL, DDPMScheduler
from transformers import AutoTokenizer, LlamaModel

import mmeff
from mmeff.car.head import DiffusionHead
from mmeff.testbed.assets import SHAPES_MAR, SHAPES_MAR_SMALL, SHAPES_SD


def test_pair_is_small_loads_with_standard_classes_and_shares_the_sd_vae():
    size = sum(f.stat().st_size for d in (SHAPES_MAR, SHAPES_MAR_SMALL) for f in d.rglob("*") if f.is_file())
    assert size < 25 * 2**20
    for folder in (SHAPES_MAR, SHAPES_MAR_SMALL):
        config = json.loads((folder / "continuous_ar.json").read_text())
        assert (folder / config["vae"]).resolve() == (SHAPES_SD / "vae").resolve()
        assert not (folder / "vae").exists()
        backbone = LlamaModel.from_pretrained(folder / "backbone")
        head = DiffusionHead.from_pretrained(folder / "head")
        assert head.config.cond_dim == backbone.config.hidden_size
        DDPMScheduler.from_pretrained(folder / "scheduler")
        AutoTokenizer.from_pretrained(folder / "backbone")
    AutoencoderKL.from_pretrained(SHAPES_SD / "vae")


def test_generates_and_the_plugins_cut_their_costs():
    pipe = mmeff.load(SHAPES_MAR)
    prompts = ["a red circle", "two blue squares"]
    images = pipe.generate_images(prompts, seed=0, diffusion_steps=10, output_type="pt")
    assert images.shape == (2, 3, 32, 32) and pipe.last_stats["head_steps"] == 640
    pipe.add_plugin("disa", upper=10, lower=2)
    pipe.generate_images(prompts, seed=0, output_type="pt")
    assert pipe.last_stats["head_steps"] < 640
    pipe.add_plugin("continuous_spec", draft=str(SHAPES_MAR_SMALL), draft_len=4)
    pipe.generate_images(prompts, seed=0, output_type="pt")
    assert pipe.last_stats["drafted"] > 0 and 0 <= pipe.last_stats["acceptance_rate"] <= 1
