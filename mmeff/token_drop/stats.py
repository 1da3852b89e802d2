"""What every token-reduction plugin reports in ``last_stats``: the final image-token count *and*
the average over decoder layers (papers mix the two), KV-cache sizes and analytic FLOPs."""

from __future__ import annotations

from typing import Any

import torch

from ..flops import decoder_prefill_flops
from .engine import DropEngine


def drop_stats(engine: DropEngine, *, scoring_flops: float = 0.0) -> dict[str, Any]:
    """Empty before the first call. ``scoring_flops``: the method's own ranking cost, added to FLOPs."""
    layouts = engine.layer_layouts()
    kv_layouts = engine.kv_layouts()
    if layouts is None or kv_layouts is None:
        return {}
    original = engine.state.layouts[0]
    image = torch.stack([lay.image_counts for lay in layouts]).float()  # (layers, B)
    tokens = torch.stack([lay.key_valid.sum(-1) for lay in layouts]).float()
    kv_tokens = torch.stack([lay.key_valid.sum(-1) for lay in kv_layouts]).float()
    before = original.image_counts.float()
    full_tokens = float(original.key_valid.sum(-1).float().mean())
    cfg = engine.adapter.text_config
    baseline = decoder_prefill_flops([full_tokens] * len(layouts), cfg)
    reduced = decoder_prefill_flops(tokens.mean(1).tolist(), cfg) + scoring_flops
    return {
        "image_tokens_before": before.tolist(),
        "image_tokens_per_layer": image.mean(1).tolist(),
        "image_tokens_per_layer_by_row": image.t().long().tolist(),
        "mean_image_tokens": float(image.mean()),
        "final_image_tokens": float(image[-1].mean()),
        "kept_image_tokens_by_row": kept_image_tokens(original, layouts[-1]),
        "retained_fraction": float(image.mean() / before.mean().clamp(min=1)),
        "kv_cache_tokens_per_layer": kv_tokens.mean(1).tolist(),
        "prefill_flops_ratio": reduced / baseline if baseline else 1.0,
    }


def kept_image_tokens(original: Any, final: Any) -> list[list[int]]:
    """Per row, which of its image tokens (0 = the row's first image token, in prompt order) the last
    decoder layer still sees: what a heat map of the kept tokens draws."""
    out = []
    for row in range(original.idx.shape[0]):
        every = original.idx[row][original.image[row] & original.valid[row]]
        left = final.idx[row][final.image[row] & final.valid[row]]
        out.append(torch.searchsorted(every, left.sort().values).tolist())
    return out


def query_scoring_flops(tokens: float, hidden: int, queries: int = 1) -> float:
    """Recomputing keys for ``tokens`` and ``queries`` query rows: two projections plus the dot products."""
    return 2 * tokens * hidden * hidden + 2 * queries * hidden * hidden + 2 * queries * tokens * hidden
