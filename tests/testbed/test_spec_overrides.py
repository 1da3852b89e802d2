"""``mmeff testbed train vlm --spec NAME=VALUE``: the model's shape is overridable like the recipe."""

from __future__ import annotations

import random

import pytest

from mmeff.testbed.model import ShapesLlavaSpec
from mmeff.testbed.qwen_model import ShapesQwen2VLSpec
from mmeff.testbed.train import parse_overrides, spec_class


def test_spec_overrides_are_typed_and_named():
    cls = spec_class("qwen2_vl")
    assert cls is ShapesQwen2VLSpec and spec_class("llava") is ShapesLlavaSpec
    spec = cls(**parse_overrides(cls, ["vision_hidden=128", "vision_mlp_ratio=4"], "--spec"))
    assert (spec.vision_hidden, spec.vision_mlp_ratio, spec.patch_size) == (128, 4, 4)
    with pytest.raises(ValueError, match="--spec takes name=value with a name among .*vision_hidden"):
        parse_overrides(cls, ["width=3"], "--spec")


def test_ar_spec_overrides_take_channel_tuples():
    """``train ar --spec codebook_size=512 --spec vq_channels=32,64,64``."""
    from mmeff.testbed.ar_model import ShapesARSpec

    spec = ShapesARSpec(**parse_overrides(ShapesARSpec, ["codebook_size=512", "vq_channels=32,64,64"], "--spec"))
    assert (spec.codebook_size, spec.vq_channels, spec.grid) == (512, (32, 64, 64), (8, 8))
    with pytest.raises(ValueError, match="invalid literal"):
        parse_overrides(ShapesARSpec, ["vq_channels=32;64"], "--spec")


def test_vlm_trainer_takes_a_device(tmp_path):
    """``train vlm --device``: the model and stage A's head live on it; scenes are still drawn on the CPU."""
    import torch

    from mmeff.testbed.train_qwen import QwenRecipe, QwenTrainer

    spec = ShapesQwen2VLSpec(image_size=32, small_size=16, vision_hidden=16, vision_layers=1, text_hidden=32,
                             text_layers=1, text_intermediate=64, heads=2, kv_heads=1, max_pixels=32 * 32,
                             min_pixels=16 * 16)
    trainer = QwenTrainer(tmp_path, QwenRecipe(vision_steps=1, vision_batch=2, chat_steps=1, chat_batch=2,
                                               accuracy_scenes=2), spec, device="cpu")
    assert trainer.device == torch.device("cpu")
    assert {p.device for p in [*trainer.model.parameters(), *trainer.head.parameters()]} == {torch.device("cpu")}
    assert torch.isfinite(trainer.vision_loss(0)) and torch.isfinite(trainer.chat_loss(0, random.Random(0)))
