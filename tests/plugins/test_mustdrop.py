"""MustDrop: the shared plugin behaviour; each stage's effect; the budget schedule."""

from __future__ import annotations

import pytest
import torch

import mmeff
from mmeff.errors import ConfigError
from mmeff.plugins.mustdrop import MustDropConfig, default_layers
from mmeff.plugins.mustdrop.ops import dual_attention, joint_score, layer_average_schedule, threshold_keep
from mmeff.testing.plugin_tests import (
    FACTORIES,
    PROMPTS,
    VLMPluginTesterMixin,
    cache_lengths,
    image_counts,
    sample_images,
)

ALL_STAGES = {"merge_threshold": -1.0, "budget": 0.25, "layers": (2, 4), "cache_policy": True}


class TestMustDrop(VLMPluginTesterMixin):
    plugin_name = "mustdrop"
    neutral_options = {"merge": False, "budget": 1.0, "cache_policy": False}
    active_options = ALL_STAGES
    bad_options = [{"budget": 0}, {"merge_threshold": 2.0}, {"layers": (4, 2)}, {"layers": (2, 8)},
                   {"merge": False, "filter": False}, {"key_fraction": 1.5}, {"merge_layer": 5}]

    def assert_effect(self, pipe, inputs):
        lengths = cache_lengths(pipe, inputs)
        full = inputs["input_ids"].shape[1]
        stats = pipe.plugins["mustdrop"].stats()
        # (a) the merge shrinks what layers 0-2 see (layer 2 runs on the full set, as released) where the
        # tower allows it (LLaVA); elsewhere layers 0-2 hold every token;
        # (b)+(c) the drops follow layers 2 and 4, and layers 3.. all hold only the final survivors
        merged = pipe.adapter.key in ("llava", "llava_next")
        keyed = pipe.adapter.key in ("llava", "llava_next", "qwen2_vl", "qwen3_vl", "internvl")  # signal + token map
        assert stats["ran"] == ["merge"] * merged + ["key_set"] * keyed + ["filter", "cache_policy"]
        assert all(n > 0 for n in stats["key_set_tokens"]) if keyed else not stats["key_set_tokens"]
        # a sliding-window layer's cache holds at most its window, whatever was dropped (Gemma 3)
        lengths = [n for i, n in enumerate(lengths) if pipe.adapter.attention_window(i) is None or i < 3]
        assert lengths[0] == lengths[1] == lengths[2]
        assert (lengths[0] < full) if merged else (lengths[0] == full)
        assert len(set(lengths[3:])) == 1 and lengths[3] < lengths[0]
        per_layer = stats["image_tokens_per_layer"]
        assert per_layer[0] == per_layer[2] > per_layer[3] >= per_layer[5] == stats["final_image_tokens"]
        if merged:  # a quarter of the tokens on average over 8 layers; unmerged, layers 0-2 spend most of it
            assert per_layer[3] > per_layer[5]
        assert stats["layers"] == [2, 4]


def test_layer_average_budget_is_met():
    """The thresholds are tuned so the image tokens averaged over the decoder layers hit the budget."""
    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("mustdrop", merge=False, budget=0.5, layers=(2, 4, 6), cache_policy=False, key_fraction=0.0)
    pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)
    stats = pipe.last_stats["mustdrop"]
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    n = image_counts(pipe, inputs)
    for row, counts in enumerate(stats["image_tokens_per_layer_by_row"]):
        assert abs(sum(counts) / len(counts) - 0.5 * int(n[row])) <= 1


def test_key_set_is_never_dropped():
    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    plugin = pipe.add_plugin("mustdrop", merge=False, budget=0.2, layers=(2,), key_fraction=0.25, cache_policy=False)
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    pipe.reset_state()
    with torch.no_grad():
        model(**inputs)
    keys = plugin._keys  # (rows, 16) grid slots
    assert keys.sum(-1).tolist() == [4, 4]
    layout = plugin.engine.state.layouts[-1]
    start = (inputs["input_ids"] == pipe.adapter.image_token_id).long().argmax(-1)
    for row in range(2):
        kept = set((layout.idx[row][layout.image[row]] - start[row]).tolist())
        assert set(keys[row].nonzero().squeeze(-1).tolist()) <= kept


def test_cache_policy_evicts_shallower_layers():
    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("mustdrop", merge=False, budget=0.5, layers=(2, 4))  # drops after layers 2 and 4
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    lengths = cache_lengths(pipe, inputs)
    assert lengths[3] == lengths[5] < lengths[2] == lengths[0]
    pipe.generate(sample_images(), PROMPTS, max_new_tokens=5)
    kv = pipe.last_stats["mustdrop"]["kv_cache_tokens_per_layer"]
    assert kv[0] == kv[2] > kv[3] and kv[3:] == [kv[3]] * 5  # evicted down to the final survivors
    pipe.add_plugin("mustdrop", merge=False, budget=0.5, layers=(2, 4), cache_policy=False)
    pipe.generate(sample_images(), PROMPTS, max_new_tokens=5)
    kv_kept = pipe.last_stats["mustdrop"]["kv_cache_tokens_per_layer"]
    assert kv_kept[3] > kv_kept[5] == kv[3]  # without the policy layers 3-4 keep what stage 1 kept


def test_default_layers_scale_with_depth():
    assert default_layers(32) == (2, 6, 10, 14)
    assert default_layers(8) == (2, 4)
    assert default_layers(6) == (1, 2, 3)
    assert default_layers(4) == (1, 2)  # the drop follows the layer, so the last one cannot drop
    assert MustDropConfig().resolve_layers(16) == (1, 3, 5, 7)


# -- ops -------------------------------------------------------------------------------
def test_dual_threshold_drops_only_when_both_are_low():
    # 2 text queries over 4 image keys
    attn = torch.tensor([[[0.50, 0.02, 0.001, 0.2], [0.40, 0.001, 0.002, 0.001]]])
    image = torch.ones(1, 4, dtype=torch.bool)
    share, peak = dual_attention(attn, torch.ones(1, 2), image)
    total = attn.sum(1)[0]
    assert torch.allclose(share[0], total / total.sum())
    assert torch.allclose(peak[0], attn[0].amax(0))
    keep = threshold_keep(share, peak, image, torch.zeros_like(image), 0.01, 0.01)
    # key 1: share 0.021/1.124 = 0.019 above 0.01 -> kept; key 2: both low -> dropped
    assert keep.tolist() == [[True, True, False, True]]
    keep = threshold_keep(share, peak, image, torch.tensor([[False, False, True, False]]), 0.01, 0.01)
    assert keep.all()
    score = joint_score(share, peak, 0.01, 0.01)
    assert int(score.argmin()) == 2


def test_schedule_hits_the_layer_average():
    counts = layer_average_schedule(576, 576, (2, 6, 10, 14), 32, 64.0, floor=0)
    lengths = [4, 4, 4, 18]
    average = (2 * 576 + sum(c * n for c, n in zip(counts, lengths))) / 32
    assert abs(average - 64) < 1 and counts == sorted(counts, reverse=True)
    assert layer_average_schedule(100, 100, (2,), 8, 100.0, floor=0) == [100]
    floored = layer_average_schedule(576, 576, (2, 6, 10, 14), 32, 64.0, floor=46)
    assert min(floored) >= 46


def test_config_errors_name_allowed_values():
    with pytest.raises(ConfigError, match="cosine"):
        MustDropConfig(merge_threshold=3)
    with pytest.raises(ConfigError, match="filter"):
        MustDropConfig(merge=False, filter=False)
    with pytest.raises(ConfigError, match="cache_policy needs filter"):
        MustDropConfig(filter=False)
    with pytest.raises(ConfigError, match="at least one stage"):
        MustDropConfig(merge=False, filter=False, cache_policy=False)
    assert MustDropConfig(filter=False, cache_policy=False).merge is None  # on where the tower allows it


def test_schedule_is_recomputed_at_every_prefill_of_direct_model_calls():
    """Issue 29 (d): a one-row ``model(...)`` after a two-row one (no pipeline call in between) keeps what
    a one-row call alone keeps; the schedule of the batch must not carry over."""
    model, processor = FACTORIES["llava_next-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("mustdrop", merge=False, budget=0.3, layers=(2, 4), cache_policy=False)
    batch = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    single = pipe.adapter.build_inputs(sample_images()[1:], PROMPTS[1:])
    with torch.no_grad():
        pipe.reset_state()
        model(**single)
        alone = pipe.plugins["mustdrop"].stats()["image_tokens_per_layer_by_row"]
        pipe.reset_state()
        model(**batch)
        model(**single)
        after_batch = pipe.plugins["mustdrop"].stats()["image_tokens_per_layer_by_row"]
    assert after_batch == alone


def test_merged_windows_get_no_size_bias_by_default_as_released():
    """Issue 29 (c): the release computes merged sizes but never uses them; ToMe's log-size bias is an option."""
    model, processor = FACTORIES["llava-sdpa"]()
    model.config.vision_feature_layer = -1  # so a ViT layer runs after the merge at layer 0
    pipe = mmeff.wrap(model, processor)
    inputs = pipe.adapter.build_inputs(sample_images()[:1], PROMPTS[:1])
    features = {}
    for proportional in (False, True):
        plugin = pipe.add_plugin("mustdrop", merge_threshold=-1.0, filter=False, cache_policy=False,
                                 proportional_attention=proportional)
        assert plugin.reducer.proportional_attention is proportional
        pipe.reset_state()
        with torch.no_grad():
            features[proportional] = model.get_image_features(
                pixel_values=inputs["pixel_values"], vision_feature_layer=-1,
                vision_feature_select_strategy="default").pooler_output[0]
        pipe.remove_plugin("mustdrop")
    assert MustDropConfig().proportional_attention is False
    kept = (features[False] != 0).any(-1)
    assert torch.equal(kept, (features[True] != 0).any(-1)) and int(kept.sum()) < kept.numel()
    assert not torch.allclose(features[False][kept], features[True][kept])


def test_key_set_comes_from_the_last_vit_layers_cls_attention_as_released():
    """Issue 29 (b): the key set is ranked by the last CLIP layer's CLS attention, not the feature layer's."""
    from mmeff.token_drop.vision_ops import cls_attention

    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    plugin = pipe.add_plugin("mustdrop", merge=False, budget=0.5, layers=(2,), key_fraction=0.25, cache_policy=False)
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    layers = pipe.adapter.vision_layers
    assert len(layers) - 1 > pipe.adapter.feature_layer_index()  # the two layers differ on this tower
    with torch.no_grad():
        with pipe.plugins_disabled():
            hidden = pipe.adapter.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
        pipe.reset_state()
        model(**inputs)
    last = layers[-1]
    x = last.layer_norm1(hidden[len(layers) - 1])
    want = cls_attention(x, last.self_attn.q_proj, last.self_attn.k_proj, last.self_attn.num_heads)[:, 1:]
    top = want.topk(4, dim=-1).indices
    for row in range(2):
        assert set(plugin._keys[row].nonzero().squeeze(-1).tolist()) == set(top[row].tolist())


def _llava_next_crops(pipe, inputs) -> torch.Tensor:
    crops = pipe.adapter.crops_per_image(inputs["image_sizes"])
    return torch.cat([p[:n] for p, n in zip(inputs["pixel_values"], crops)])


def test_llava_next_patch_positions_follow_the_models_own_packing():
    """The patch-to-position map gives, for every packed image token, the projected patch it carries."""
    model, processor = FACTORIES["llava_next-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    cfg = model.config
    with torch.no_grad():
        packed = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                                                return_dict=True).pooler_output
        hidden = pipe.adapter.vision_tower(_llava_next_crops(pipe, inputs), output_hidden_states=True).hidden_states
        patches = model.model.multi_modal_projector(hidden[cfg.vision_feature_layer][:, 1:]).flatten(0, 1)
    where = pipe.adapter.patch_positions(inputs["image_sizes"])
    assert [w.numel() for w in where] == [p.shape[0] for p in packed]
    assert all(int((w >= 0).sum()) < w.numel() for w in where)  # newlines, and unpadding removed some patches
    for w, p in zip(where, packed):
        torch.testing.assert_close(p[w >= 0], patches[w[w >= 0]])
        assert torch.equal(p[w < 0], model.model.image_newline.expand(int((w < 0).sum()), -1))


def test_llava_next_key_set_is_each_crops_cls_top_mapped_through_the_packing():
    model, processor = FACTORIES["llava_next-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    plugin = pipe.add_plugin("mustdrop", merge=False, budget=0.2, layers=(2,), key_fraction=0.25, cache_policy=False)
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    with torch.no_grad():
        with pipe.plugins_disabled():
            hidden = pipe.adapter.vision_tower(_llava_next_crops(pipe, inputs), output_hidden_states=True).hidden_states
        pipe.reset_state()
        model(**inputs)
    from mmeff.token_drop.vision_ops import cls_attention

    last = pipe.adapter.vision_layers[-1]
    cls = cls_attention(last.layer_norm1(hidden[-2]), last.self_attn.q_proj, last.self_attn.k_proj,
                        last.self_attn.num_heads)[:, 1:]
    crop_keys = torch.zeros_like(cls, dtype=torch.bool)
    crop_keys.scatter_(1, cls.topk(4, dim=-1).indices, True)  # 25% of a 4x4 crop
    where = torch.cat(pipe.adapter.patch_positions(inputs["image_sizes"]))
    image = inputs["input_ids"] == pipe.adapter.image_token_id
    want = torch.zeros_like(image)
    want[image] = crop_keys.flatten()[where.clamp(min=0)] & (where >= 0)
    assert torch.equal(plugin._slot_keys, want) and want.any(-1).all()
    layout = plugin.engine.state.layouts[-1]
    for row in range(2):
        kept = set(layout.idx[row][layout.image[row] & layout.valid[row]].tolist())
        assert set(want[row].nonzero().squeeze(-1).tolist()) <= kept < set(image[row].nonzero().squeeze(-1).tolist())


def test_internvl_key_set_is_each_tiles_top_tokens_by_their_patches_cls_attention():
    model, processor = FACTORIES["internvl-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    plugin = pipe.add_plugin("mustdrop", budget=0.2, layers=(2,), key_fraction=0.25, cache_policy=False)
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    with torch.no_grad():
        with pipe.plugins_disabled():
            share, _ = pipe.adapter.cls_token_scores(inputs["pixel_values"])  # tested in test_internvl.py
        pipe.reset_state()
        model(**inputs)
    tile_keys = torch.zeros_like(share, dtype=torch.bool)
    tile_keys.scatter_(1, share.topk(1, dim=-1).indices, True)  # 25% of 4 tokens per tile
    image = inputs["input_ids"] == pipe.adapter.image_token_id
    want = torch.zeros_like(image)
    want[image] = tile_keys.flatten()
    assert torch.equal(plugin._slot_keys, want)
    layout = plugin.engine.state.layouts[-1]
    for row in range(2):
        kept = set(layout.idx[row][layout.image[row] & layout.valid[row]].tolist())
        assert set(want[row].nonzero().squeeze(-1).tolist()) <= kept < set(image[row].nonzero().squeeze(-1).tolist())
