"""MustDrop on Qwen2/2.5/3-VL: the decoder filter and cache policy as on LLaVA; the key set (never dropped)
is each image's or video's top ``key_fraction`` of merged tokens by the attention their patches receive in
the tower's last block (VisionZip's Qwen signal), mapped to the prompt tokens the model writes them to."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mmeff
from mmeff.errors import UnsupportedModelError
from mmeff.testing import tiny_qwen2_vl
from mmeff.testing.plugin_tests import forward_modules
from mmeff.token_drop.merged_vision import merged_counts, tower_signal

FRACTION = 0.3


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)]


def _clip() -> list[np.ndarray]:
    rng = np.random.default_rng(9)
    return [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(4)]


def _reference_keys(pipe, inputs) -> torch.Tensor:
    """(B, L): per image, then per video, the top ceil(FRACTION * n) tokens by the tower's received attention,
    written to that item's placeholders in row-major order (where the model scatters its features)."""
    tower, ids = pipe.adapter.vision_tower, inputs["input_ids"]
    want = torch.zeros_like(ids, dtype=torch.bool)
    for token, pixels, grid_key in ((pipe.adapter.image_token_id, "pixel_values", "image_grid_thw"),
                                    (pipe.adapter.video_token_id, "pixel_values_videos", "video_grid_thw")):
        if inputs.get(pixels) is None:
            continue
        grid = inputs[grid_key]
        scores = tower_signal(tower, inputs[pixels], grid)
        flat, start = torch.zeros_like(scores, dtype=torch.bool), 0
        for n in merged_counts(tower, grid):
            flat[start + scores[start : start + n].topk(math.ceil(FRACTION * n)).indices] = True
            start += n
        want[ids == token] = flat
    return want


@pytest.mark.parametrize("variant", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_key_set_is_the_top_received_attention_tokens_and_survives(variant):
    model, processor = tiny_qwen2_vl(variant=variant, layers=6)
    pipe = mmeff.wrap(model, processor)
    plugin = pipe.add_plugin("mustdrop", budget=0.3, layers=(2,), key_fraction=FRACTION, cache_policy=False)
    assert plugin.ran_stages() == ["key_set", "filter"]
    inputs = pipe.adapter.build_inputs([_images()[0], None], ["what is in the image ?", "what happens ?"],
                                       videos=[None, _clip()])
    with pipe.plugins_disabled():
        want = _reference_keys(pipe, inputs)
    pipe.reset_state()
    with torch.no_grad():
        model(**inputs)
    assert torch.equal(plugin._slot_keys, want)
    assert want.sum(-1).tolist() == plugin.stats()["key_set_tokens"] and want.any(-1).all()
    layout = plugin.engine.state.layouts[-1]
    for row in range(2):
        kept = set(layout.idx[row][layout.image[row] & layout.valid[row]].tolist())
        keys = set(want[row].nonzero().squeeze(-1).tolist())
        assert keys <= kept and len(kept) < int(pipe.adapter.image_token_mask(inputs["input_ids"])[row].sum())


def test_merge_asked_for_is_refused_with_the_reason_and_the_model_untouched():
    model, processor = tiny_qwen2_vl(layers=6)
    pipe = mmeff.wrap(model, processor)
    forwards = forward_modules(model)
    with pytest.raises(UnsupportedModelError, match="no CLS token.*merge=None or False"):
        pipe.add_plugin("mustdrop", merge=True)
    assert not pipe.plugins and forward_modules(model) == forwards
    plugin = pipe.add_plugin("mustdrop", key_fraction=0)  # the filter alone
    assert plugin.ran_stages() == ["filter", "cache_policy"] and plugin.owned_stages() == ("prefill", "decode")


def test_composes_with_visionzip_on_qwen():
    """The merge is off on Qwen, so MustDrop takes no vision stage and VisionZip may own it."""
    model, processor = tiny_qwen2_vl(layers=6)
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("visionzip", dominant=4, contextual=1, budget=None)
    pipe.add_plugin("mustdrop", budget=0.1, layers=(2,))
    pipe.generate(_images(), ["what is in the image ?", "how many ?"], max_new_tokens=3)
    per_layer = pipe.last_stats["mustdrop"]["image_tokens_per_layer_by_row"]
    assert [row[0] for row in per_layer] == [5, 5]  # VisionZip's 4 dominant + 1 contextual reach layer 0
    assert all(row[3] < row[2] for row in per_layer)  # MustDrop's filter drops more after layer 2
