"""PyramidDrop's ranking: attention of the last instruction token, recomputed for one query row."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn


def last_query_attention(
    hidden: torch.Tensor,
    *,
    norm: nn.Module,
    q_proj: nn.Module,
    k_proj: nn.Module,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    apply_rotary: Callable,
    cos: torch.Tensor,
    sin: torch.Tensor,
    query_slot: torch.Tensor,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """Head-averaged softmax attention of each row's token at ``query_slot`` (B,) over its keys (B, L).

    Uses the *next* layer's norm and q/k projections with rotary embeddings, as the paper
    does, but only one query row: O(L·d) instead of an L×L attention matrix.
    """
    batch, length, _ = hidden.shape
    x = norm(hidden)
    slot = query_slot.to(hidden.device).view(batch, 1, 1)
    x_q = x.gather(1, slot.expand(-1, 1, x.shape[-1]))
    q = q_proj(x_q).view(batch, 1, num_heads, head_dim).transpose(1, 2)
    k = k_proj(x).view(batch, length, num_kv_heads, head_dim).transpose(1, 2)
    cos, sin = cos.expand(batch, -1, -1), sin.expand(batch, -1, -1)
    cos_q = cos.gather(1, slot.expand(-1, 1, cos.shape[-1]))
    sin_q = sin.gather(1, slot.expand(-1, 1, sin.shape[-1]))
    q, _ = apply_rotary(q, q, cos_q, sin_q)
    _, k = apply_rotary(k, k, cos, sin)
    k = k.repeat_interleave(num_heads // num_kv_heads, dim=1)
    logits = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) / math.sqrt(head_dim)  # (B, H, L)
    allowed = key_valid.to(hidden.device) & (torch.arange(length, device=hidden.device) <= slot.view(batch, 1))
    logits = logits.masked_fill(~allowed[:, None, :], float("-inf"))
    return logits.softmax(-1).mean(1)


def topk_mask(scores: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per row, mark the ``counts[b]`` highest-scoring ``candidates`` (B, L) bool."""
    k_max = int(counts.max()) if counts.numel() else 0
    keep = torch.zeros_like(candidates)
    if k_max == 0:
        return keep
    masked = scores.masked_fill(~candidates, float("-inf"))
    top = masked.topk(k_max, dim=-1).indices
    within = torch.arange(k_max, device=scores.device)[None, :] < counts[:, None]
    keep.scatter_(1, top, within)
    return keep & candidates


def stage_keep_counts(original_counts: torch.Tensor, ratio: float, stage: int) -> torch.Tensor:
    """``int(n * ratio**stage)`` per row, the released code's cumulative ratio schedule."""
    return torch.floor(original_counts.double() * ratio**stage + 1e-9).long()
