"""PyramidDrop: the shared plugin behaviour plus its own effects and faithfulness checks."""

from __future__ import annotations

import pytest
import torch

import mmeff
from mmeff.errors import ConfigError, InputError
from mmeff.plugins.pyramid_drop import PyramidDropConfig, default_layers
from mmeff.plugins.pyramid_drop.ops import last_query_attention, stage_keep_counts, topk_mask
from mmeff.testing.plugin_tests import FACTORIES, FACTORY_PARAMS, PROMPTS, VLMPluginTesterMixin, sample_images


class TestPyramidDrop(VLMPluginTesterMixin):
    plugin_name = "pyramid_drop"
    neutral_options = {"ratio": 1.0}
    active_options = {"ratio": 0.5}
    bad_options = [
        {"ratio": 0.0},
        {"ratio": 1.5},
        {"ratio": -0.1},
        {"layers": (4, 2)},
        {"layers": (2, 2)},
        {"layers": ()},
        {"layers": (0, 4)},
        {"layers": (2, 8)},  # out of range for the 8-layer test model
        {"unknown": 1},
    ]

    def assert_effect(self, pipe, inputs):
        with torch.no_grad():
            pipe.reset_state()
            out = pipe.model(**inputs, use_cache=True)
        cache = out.cache
        lengths = [cache.get_seq_length(i) for i in range(len(pipe.adapter.layers))]
        full = inputs["input_ids"].shape[1]
        # 8 layers -> boundaries (2, 4, 6); the longest row loses n/2, 3n/4, 7n/8 image tokens
        assert lengths[:2] == [full, full]
        assert lengths[2] < lengths[0] and lengths[4] < lengths[2] and lengths[6] < lengths[4]
        assert lengths[2:4] == [lengths[2]] * 2 and lengths[6:] == [lengths[6]] * 2
        stats = pipe.plugins["pyramid_drop"].stats()
        n = (inputs["input_ids"] == pipe.adapter.image_token_id).sum(-1)
        expect = [n, n, n // 2, n // 2, n // 4, n // 4, n // 8, n // 8]
        assert stats["image_tokens_per_layer_by_row"] == torch.stack(expect, 1).tolist()
        assert stats["prefill_flops_ratio"] < 1.0
        assert 0 < stats["retained_fraction"] < 1


@pytest.mark.parametrize("factory", FACTORY_PARAMS)
def test_cached_generation_matches_no_cache_recomputation(factory):
    """Decode steps with per-layer shrunken caches == re-running the whole dropped sequence."""
    model, processor = FACTORIES[factory]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("pyramid_drop")
    cached = pipe.generate(sample_images(), PROMPTS, max_new_tokens=8, return_ids=True)
    uncached = pipe.generate(sample_images(), PROMPTS, max_new_tokens=8, return_ids=True, use_cache=False)
    assert torch.equal(cached.new_tokens, uncached.new_tokens)


def test_decode_logits_match_no_cache_forward():
    """Stronger than tokens: the last-step logits agree to float precision."""
    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("pyramid_drop")
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    pipe.reset_state()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
        last_cached = out.logits[-1]
        full_ids = out.sequences[:, :-1]
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(full_ids[:, inputs["input_ids"].shape[1]:])], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        recomputed = model(input_ids=full_ids, attention_mask=mask, position_ids=positions,
                           pixel_values=inputs["pixel_values"], use_cache=False).logits[:, -1]
    torch.testing.assert_close(recomputed, last_cached, atol=1e-5, rtol=1e-5)


def test_llava_next_rows_keep_their_own_counts():
    model, processor = FACTORIES["llava_next-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("pyramid_drop", ratio=0.5)
    pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)
    rows = pipe.last_stats["pyramid_drop"]["image_tokens_per_layer_by_row"]
    assert rows[0][0] != rows[1][0], "square and wide images must give different token counts"
    for row in rows:
        assert row[-1] == int(row[0] * 0.125)


def test_default_layers_scale_with_depth():
    assert default_layers(32) == (8, 16, 24)
    assert default_layers(40) == (10, 20, 30)
    assert default_layers(8) == (2, 4, 6)
    assert default_layers(2) == (1,)
    assert PyramidDropConfig().resolve_layers(32) == (8, 16, 24)


def test_config_errors_name_allowed_values():
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        PyramidDropConfig(ratio=2)
    with pytest.raises(ConfigError, match="strictly increasing"):
        PyramidDropConfig(layers=(16, 8))


def test_unsupported_attention_is_rejected_before_attaching():
    model, processor = FACTORIES["llava-sdpa"]()
    model.config.get_text_config()._attn_implementation = "flex_attention"
    pipe = mmeff.wrap(model, processor)
    with pytest.raises(ConfigError, match="sdpa"):
        pipe.add_plugin("pyramid_drop")
    assert not pipe.plugins


def test_image_token_count_mismatch_is_a_clear_error():
    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("pyramid_drop")
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    ids = inputs["input_ids"].clone()
    ids[ids == pipe.adapter.image_token_id] = 7  # drop every image placeholder
    with pytest.raises(InputError, match="image tokens"):
        pipe.adapter.check_token_counts(ids, inputs)
    # the model still works afterwards
    assert len(pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)) == 2


def test_static_cache_is_rejected():
    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("pyramid_drop")
    with pytest.raises(ConfigError, match="DynamicCache"):
        pipe.generate(sample_images(), PROMPTS, max_new_tokens=2, cache_implementation="static")
    assert len(pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)) == 2


# -- ops -------------------------------------------------------------------------------
def test_last_query_attention_matches_full_attention_row():
    torch.manual_seed(0)
    model, _ = FACTORIES["llava-eager"]()
    from mmeff.adapters.llava import LlavaAdapter

    adapter = LlavaAdapter(model)
    layer = adapter.layers[2]
    hidden = torch.randn(2, 10, adapter.text_config.hidden_size)
    positions = torch.arange(10).expand(2, -1)
    cos, sin = adapter.rotary(hidden, positions)
    parts = adapter.qk_parts(2)
    got = last_query_attention(
        hidden, norm=parts.norm, q_proj=parts.q_proj, k_proj=parts.k_proj, num_heads=parts.num_heads,
        num_kv_heads=parts.num_kv_heads, head_dim=parts.head_dim, apply_rotary=parts.apply_rotary,
        cos=cos, sin=sin, query_slot=torch.tensor([9, 9]), key_valid=torch.ones(2, 10, dtype=torch.bool),
    )
    # reference: the eager attention module's own weights for the last row
    mask = torch.full((10, 10), torch.finfo(torch.float32).min).triu(1)[None, None].expand(2, 1, 10, 10)
    _, weights = layer.self_attn(layer.input_layernorm(hidden), position_embeddings=(cos, sin), attention_mask=mask)
    torch.testing.assert_close(got, weights[:, :, -1].mean(1), atol=1e-5, rtol=1e-5)


def test_topk_mask_respects_counts_and_candidates():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    candidates = torch.tensor([[True, True, True, False], [True, True, True, True]])
    keep = topk_mask(scores, candidates, torch.tensor([2, 1]))
    assert keep.tolist() == [[False, True, True, False], [True, False, False, False]]


def test_stage_keep_counts_follow_released_schedule():
    n = torch.tensor([576, 100])
    assert stage_keep_counts(n, 0.5, 1).tolist() == [288, 50]
    assert stage_keep_counts(n, 0.5, 3).tolist() == [72, 12]


@pytest.mark.parametrize("factory", ["llava-sdpa", "llava-eager"])
def test_right_padded_rows_match_single_runs(factory):
    """Outputs are restored to the input layout, and each row ranks with its own last token."""
    model, processor = FACTORIES[factory]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("pyramid_drop")
    singles = [pipe.adapter.build_inputs([img], [p]) for img, p in zip(sample_images(), PROMPTS)]
    width = max(s["input_ids"].shape[1] for s in singles)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, s in enumerate(singles):
        n = s["input_ids"].shape[1]
        ids[row, :n], mask[row, :n] = s["input_ids"][0], 1
    pixel_values = torch.cat([s["pixel_values"] for s in singles])
    with torch.no_grad():
        pipe.reset_state()
        batched = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values).logits
        assert batched.shape[1] == width
        for row, s in enumerate(singles):
            pipe.reset_state()
            alone = model(**s).logits[0, -1]
            n = s["input_ids"].shape[1]
            torch.testing.assert_close(batched[row, n - 1], alone, atol=1e-5, rtol=1e-5)


def test_bare_language_model_calls_pass_through_after_a_generate():
    """State from the last call never leaks into a forward the plugin did not capture."""
    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    embeds = torch.randn(1, 5, model.config.text_config.hidden_size)
    with torch.no_grad():
        plain = pipe.adapter.language_model(inputs_embeds=embeds).last_hidden_state
        pipe.add_plugin("pyramid_drop")
        pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)
        hooked = pipe.adapter.language_model(inputs_embeds=embeds).last_hidden_state
    assert torch.equal(hooked, plain)
