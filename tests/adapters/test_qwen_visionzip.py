"""VisionZip on Qwen2/2.5/3-VL against its Qwen2.5-VL release's rule, transcribed here on the same tensors.

The release (dvlab-research/VisionZip, ``Qwen2_5_VL/qwen2_5vl_visionzip.py``, eager path) recomputes
the last vision block's attention with a block-diagonal mask from ``cu_seqlens``, averages it over
heads, sums it over query rows, averages each merged token's 4 patches and puts the scores in the
LLM's order (``argsort(window_index)``); keys are the block's rotary keys averaged over heads and
over the 4 patches. It keeps the top ``dominant`` tokens and ``contextual`` tokens made of a
uniformly strided target plus the mean of the others most cosine-similar to it.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmeff
from mmeff.testing import tiny_qwen2_vl
from mmeff.testing.plugin_tests import PROMPTS
from mmeff.token_drop.engine import DropEngine

DOMINANT, CONTEXTUAL = 5, 3


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)]


def _release_rule(tower, hidden, cu_seqlens, cos_sin, merged, grid) -> torch.Tensor:
    """The release's selection, written out: returns the tower output it hands the LLM (zeros for dropped)."""
    block = tower.blocks[-1]
    attn = block.attn
    seq = hidden.shape[0]
    qkv = attn.qkv(block.norm1(hidden)).reshape(seq, 3, attn.num_heads, -1).permute(1, 0, 2, 3)
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
    q, k = rotate(qkv[0], qkv[1], *cos_sin)
    q, k = q.transpose(0, 1), k.transpose(0, 1)  # (H, S, d)
    mask = torch.full((seq, seq), float("-inf"))
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        mask[a:b, a:b] = 0
    logits = q @ k.transpose(-1, -2) * attn.scaling + mask
    attn_mean = logits.softmax(-1).mean(0).sum(0)  # heads, then query rows: attention received
    scores = attn_mean.view(seq // 4, -1).mean(-1)
    keys = k.mean(0).view(seq // 4, 4, -1).mean(1)
    module = sys.modules[type(tower).__module__]
    if hasattr(tower, "window_size"):
        window_index, _ = module.get_vision_window_index(grid, spatial_merge_size=2, window_size=tower.window_size,
                                                         patch_size=tower.patch_size)
        reverse = torch.argsort(window_index)
        scores, keys = scores[reverse], keys[reverse]
    out = torch.zeros_like(merged)
    start = 0
    for n in (grid.prod(-1) // 4).tolist():
        s, kk, x = scores[start : start + n], keys[start : start + n], merged[start : start + n]
        dominant = s.topk(DOMINANT).indices
        out[start + dominant] = x[dominant]
        rest = torch.tensor([i for i in range(n) if i not in set(dominant.tolist())])
        step = max(1, len(rest) // CONTEXTUAL)
        targets = rest[torch.arange(0, len(rest), step)[:CONTEXTUAL]]
        others = torch.tensor([i for i in rest.tolist() if i not in set(targets.tolist())])
        sim = F.normalize(kk[others], dim=-1) @ F.normalize(kk[targets], dim=-1).T
        assign = sim.argmax(-1)
        for j, t in enumerate(targets.tolist()):
            members = others[assign == j]
            extra = x[members].mean(0) if len(members) else torch.zeros_like(x[t])
            out[start + t] = x[t] + extra
        start += n
    return out


@pytest.mark.parametrize("variant", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_selection_equals_the_release_rule(variant):
    model, processor = tiny_qwen2_vl(variant=variant, layers=2)
    pipe = mmeff.wrap(model, processor)
    tower = pipe.adapter.vision_tower
    inputs = pipe.adapter.build_inputs(_images(), PROMPTS)
    captured = {}

    def last_block(module, args, kwargs):
        captured["block"] = (args[0] if args else kwargs["hidden_states"], kwargs["cu_seqlens"],
                             kwargs["position_embeddings"])

    handle = tower.blocks[-1].register_forward_pre_hook(last_block, with_kwargs=True)
    try:
        with torch.no_grad():
            plain = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
            want = _release_rule(tower, *captured["block"], plain, inputs["image_grid_thw"])
    finally:
        handle.remove()
    assert len(set((inputs["image_grid_thw"].prod(-1) // 4).tolist())) == 2  # two images, two token counts

    pipe.add_plugin("visionzip", dominant=DOMINANT, contextual=CONTEXTUAL, budget=None)
    pipe.reset_state()
    with torch.no_grad():
        got = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
    kept = (got != 0).any(-1)
    assert torch.equal(kept, (want != 0).any(-1))
    assert int(kept.sum()) == 2 * (DOMINANT + CONTEXTUAL)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_decoder_sees_only_survivors_at_their_original_positions():
    """Kept tokens enter the decoder with their own (t, h, w) ids; everything else is gone before layer 0."""
    model, processor = tiny_qwen2_vl(variant="qwen2_5_vl", layers=4)
    pipe = mmeff.wrap(model, processor)
    inputs = pipe.adapter.build_inputs(_images(), PROMPTS)
    pipe.add_plugin("visionzip", budget=0.25)
    with torch.no_grad():
        model(**inputs)
    engine = DropEngine.existing(pipe.adapter)
    full, first = engine.state.layouts[0], engine.layer_layouts()[0]
    before = full.image_counts.tolist()
    after = first.image_counts.tolist()
    per_image = (inputs["image_grid_thw"].prod(-1) // 4).tolist()
    assert before == per_image
    assert after == [round(n * 0.25) for n in per_image]
    gathered = full.positions.gather(2, first.idx[None].expand(3, -1, -1))
    assert torch.equal(torch.where(first.valid, gathered, 0), first.positions)
    stats = pipe.plugins["visionzip"].stats()
    assert stats["final_image_tokens"] < stats["image_tokens_before"][0]
