"""``mmeff testbed train vlm --spec NAME=VALUE``: the model's shape is overridable like the recipe."""

from __future__ import annotations

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
