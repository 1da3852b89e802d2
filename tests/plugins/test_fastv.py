"""FastV: the shared plugin behaviour plus its one-shot drop at layer K."""

from __future__ import annotations

import pytest
import torch

import mmeff
from mmeff.errors import ConfigError
from mmeff.plugins.fastv import FastVConfig
from mmeff.testing.plugin_tests import (
    FACTORIES,
    FACTORY_PARAMS,
    PROMPTS,
    VLMPluginTesterMixin,
    cache_lengths,
    image_counts,
    sample_images,
)


class TestFastV(VLMPluginTesterMixin):
    plugin_name = "fastv"
    neutral_options = {"ratio": 0.0}
    active_options = {"k": 2, "ratio": 0.5}
    bad_options = [{"k": 0}, {"k": 8}, {"ratio": 1.0}, {"ratio": -0.5}, {"budget": 2}, {"budget": "100"}, {"x": 1}]

    def assert_effect(self, pipe, inputs):
        lengths = cache_lengths(pipe, inputs)
        n = image_counts(pipe, inputs)
        full = inputs["input_ids"].shape[1]
        assert lengths[:2] == [full, full] and len(set(lengths[2:])) == 1 and lengths[2] < full
        stats = pipe.plugins["fastv"].stats()
        kept = torch.round(n * 0.5).long()
        for row, counts in enumerate(stats["image_tokens_per_layer_by_row"]):
            assert counts == [int(n[row])] * 2 + [int(kept[row])] * 6
        assert stats["final_image_tokens"] < stats["mean_image_tokens"] < stats["image_tokens_before"][0] + 1


@pytest.mark.parametrize("factory", FACTORY_PARAMS)
def test_cached_generation_matches_no_cache_recomputation(factory):
    model, processor = FACTORIES[factory]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("fastv", k=3, budget=0.25)
    cached = pipe.generate(sample_images(), PROMPTS, max_new_tokens=6, return_ids=True)
    uncached = pipe.generate(sample_images(), PROMPTS, max_new_tokens=6, return_ids=True, use_cache=False)
    assert torch.equal(cached.new_tokens, uncached.new_tokens)


def test_budget_overrides_ratio_and_presets_scale():
    assert FastVConfig(budget="64").kept(576) == 64
    assert FastVConfig(budget="192").kept(576) == 192
    assert FastVConfig(budget="64").kept(144) == 16
    assert FastVConfig(ratio=0.5).kept(16) == 8
    with pytest.raises(ConfigError, match="192"):
        FastVConfig(budget="96")


def test_keeps_the_most_attended_tokens():
    """Against a brute-force ranking: full eager attention of layer K-1, last prompt row, head mean."""
    model, processor = FACTORIES["llava-eager"]()
    pipe = mmeff.wrap(model, processor)
    inputs = pipe.adapter.build_inputs(sample_images()[:1], PROMPTS[:1])
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    attn = out.attentions[1][0].mean(0)[-1]  # layer K-1 = 1, last prompt token
    image = inputs["input_ids"][0] == pipe.adapter.image_token_id
    n = int(image.sum())
    expected = set(attn.masked_fill(~image, -1).topk(n // 2).indices.tolist())
    pipe.add_plugin("fastv", k=2, ratio=0.5)
    pipe.reset_state()
    with torch.no_grad():
        model(**inputs)
    layout = pipe.plugins["fastv"].engine.state.layouts[-1]
    kept = set(layout.idx[0][layout.image[0]].tolist())
    assert kept == expected
