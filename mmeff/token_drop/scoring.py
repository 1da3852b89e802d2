"""Attention rows recomputed for a few query tokens: how in-LLM methods rank image tokens
without materialising an L×L attention matrix (works under sdpa, eager and flash alike)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from ..adapters.vlm import VLMAdapter


def query_attention(
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
    query_slots: torch.Tensor,
    key_valid: torch.Tensor,
    scaling: float | None = None,
    q_norm: nn.Module | None = None,
    k_norm: nn.Module | None = None,
    softcap: float | None = None,
    key_allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head-averaged causal softmax attention of the tokens at ``query_slots`` (B, Q) over all keys: (B, Q, L).

    Uses the given layer's norm and q/k projections with rotary embeddings, for Q query rows
    only: O(Q·L·d) instead of O(L²·d). ``key_allowed`` (B, Q, L) further restricts each query's
    keys (a sliding window).
    """
    batch, length, _ = hidden.shape
    n_q = query_slots.shape[1]
    x = norm(hidden)
    slots = query_slots.to(hidden.device)
    x_q = x.gather(1, slots[..., None].expand(-1, -1, x.shape[-1]))
    q = q_proj(x_q).view(batch, n_q, num_heads, head_dim)
    k = k_proj(x).view(batch, length, num_kv_heads, head_dim)
    if q_norm is not None:
        q = q_norm(q)
    if k_norm is not None:
        k = k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = cos.expand(batch, -1, -1), sin.expand(batch, -1, -1)
    cos_q = cos.gather(1, slots[..., None].expand(-1, -1, cos.shape[-1]))
    sin_q = sin.gather(1, slots[..., None].expand(-1, -1, sin.shape[-1]))
    q, _ = apply_rotary(q, q, cos_q, sin_q)
    _, k = apply_rotary(k, k, cos, sin)
    k = k.repeat_interleave(num_heads // num_kv_heads, dim=1)
    scale = scaling if scaling is not None else 1 / math.sqrt(head_dim)
    logits = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, Q, L)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    causal = torch.arange(length, device=hidden.device)[None, None, :] <= slots[..., None]
    allowed = key_valid.to(hidden.device)[:, None, :] & causal  # (B, Q, L)
    if key_allowed is not None:
        allowed = allowed & key_allowed.to(hidden.device)
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    return logits.softmax(-1).nan_to_num(0.0).mean(1)


def last_query_attention(hidden: torch.Tensor, *, query_slot: torch.Tensor, **parts) -> torch.Tensor:
    """:func:`query_attention` for one query row per batch row: (B, L)."""
    return query_attention(hidden, query_slots=query_slot.view(-1, 1), **parts)[:, 0]


def attention_at_layer(
    adapter: VLMAdapter, layer_idx: int, hidden: torch.Tensor, cos_sin, query_slots: torch.Tensor,
    key_valid: torch.Tensor, key_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`query_attention` with decoder layer ``layer_idx``'s norm and projections: (B, Q, L).

    ``cos_sin`` may be a per-layer-type table (Gemma 3's local and global rotary); ``key_index``
    (B, L) names each slot's token in the full sequence (default: no token dropped yet), which a
    sliding-window layer measures its window in."""
    p = adapter.qk_parts(layer_idx)
    cos, sin = adapter.for_layer(cos_sin, layer_idx)
    key_allowed = None
    if p.window is not None:
        if key_index is None:
            key_index = torch.arange(hidden.shape[1], device=hidden.device).expand(hidden.shape[0], -1)
        key_index = key_index.to(hidden.device)
        q_index = key_index.gather(1, query_slots.to(hidden.device))
        key_allowed = key_index[:, None, :] > q_index[:, :, None] - p.window
    return query_attention(
        hidden, norm=p.norm, q_proj=p.q_proj, k_proj=p.k_proj, num_heads=p.num_heads, num_kv_heads=p.num_kv_heads,
        head_dim=p.head_dim, apply_rotary=p.apply_rotary, cos=cos, sin=sin, query_slots=query_slots,
        key_valid=key_valid, scaling=p.scaling, q_norm=p.q_norm, k_norm=p.k_norm, softcap=p.softcap,
        key_allowed=key_allowed,
    )


def topk_mask(scores: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per row, mark the ``counts[b]`` highest-scoring ``candidates`` (B, L) bool."""
    k_max = int(counts.max()) if counts.numel() else 0
    keep = torch.zeros_like(candidates)
    if k_max == 0:
        return keep
    masked = scores.masked_fill(~candidates, float("-inf"))
    top = masked.topk(min(k_max, scores.shape[-1]), dim=-1).indices
    within = torch.arange(top.shape[-1], device=scores.device)[None, :] < counts[:, None]
    keep.scatter_(1, top, within)
    return keep & candidates
