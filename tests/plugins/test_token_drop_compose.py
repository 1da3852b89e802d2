"""Vision-side and decoder-side methods compose; two owners of one stage are refused."""

from __future__ import annotations

import pytest
import torch

import mmeff
from mmeff.errors import ConfigError
from mmeff.testing.plugin_tests import FACTORIES, PROMPTS, cache_lengths, forward_modules, sample_images


@pytest.mark.parametrize("factory", ["llava-sdpa", "llava_next-sdpa"])
def test_vision_and_decoder_side_compose(factory):
    model, processor = FACTORIES[factory]()
    pipe = mmeff.wrap(model, processor)
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    full = inputs["input_ids"].shape[1]
    pipe.add_plugin("visionzip", budget=0.5)
    vision_only = cache_lengths(pipe, inputs)
    pipe.add_plugin("pyramid_drop", ratio=0.5)
    both = cache_lengths(pipe, inputs)
    assert vision_only[0] == both[0] < full  # the decoder starts from VisionZip's tokens
    assert both[-1] < both[0]  # and PyramidDrop drops further
    stats = pipe.plugins["pyramid_drop"].stats()
    rows = stats["image_tokens_per_layer_by_row"]
    for row in rows:  # PyramidDrop's ratios apply to what reaches the decoder
        assert row[2] == int(row[0] * 0.5)
    out = pipe.generate(sample_images(), PROMPTS, max_new_tokens=4, return_ids=True)
    uncached = pipe.generate(sample_images(), PROMPTS, max_new_tokens=4, return_ids=True, use_cache=False)
    assert torch.equal(out.new_tokens, uncached.new_tokens)


@pytest.mark.parametrize(("first", "second"), [("visionzip", "tome"), ("pyramid_drop", "fastv"),
                                               ("fastv", "mustdrop"), ("tome", "mustdrop")])
def test_two_owners_of_a_stage_are_refused(first, second):
    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin(first)
    forwards = forward_modules(model)
    with pytest.raises(ConfigError, match="both take over"):
        pipe.add_plugin(second)
    assert list(pipe.plugins) == [first] and forward_modules(model) == forwards


def test_mustdrop_without_its_merge_composes_with_visionzip():
    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("visionzip", budget=0.5)
    pipe.add_plugin("mustdrop", merge=False, budget=0.25, layers=(2, 4))
    assert len(pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)) == 2
    pipe.remove_all_plugins()
    assert not any("_mmeff_hooks" in m.__dict__ for m in model.modules())


def test_a_failing_attach_leaves_no_engine_behind(monkeypatch):
    from mmeff.token_drop.vision import VisionReducer

    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    forwards = forward_modules(model)
    baseline = pipe.generate(sample_images(), PROMPTS, max_new_tokens=3, return_ids=True).new_tokens

    attach = VisionReducer.attach

    def boom(self, ctx):  # fails after the engine got its stage and hooks
        attach(self, ctx)
        raise RuntimeError("boom")

    monkeypatch.setattr(VisionReducer, "attach", boom)
    with pytest.raises(RuntimeError, match="boom"):
        pipe.add_plugin("visionzip")
    assert not pipe.plugins and forward_modules(model) == forwards
    assert torch.equal(pipe.generate(sample_images(), PROMPTS, max_new_tokens=3, return_ids=True).new_tokens, baseline)
