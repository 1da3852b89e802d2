"""Analytic FLOP counts, so benchmarks and ``last_stats`` can state savings without a profiler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def decoder_layer_flops(n_tokens: float, text_config: Any) -> float:
    """Multiply-adds x2 of one Llama-style decoder layer over ``n_tokens`` tokens (prefill).

    q/k/v/o projections + attention scores and weighted sum (full n x n, as FastV and
    PyramidDrop count it) + a gated MLP (three matrices).
    """
    d = text_config.hidden_size
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or d // heads
    kv = (getattr(text_config, "num_key_value_heads", None) or heads) * head_dim
    m = text_config.intermediate_size
    projections = 2 * n_tokens * d * (heads * head_dim + 2 * kv) + 2 * n_tokens * heads * head_dim * d
    attention = 4 * n_tokens * n_tokens * heads * head_dim
    mlp = 6 * n_tokens * d * m
    return projections + attention + mlp


def decoder_prefill_flops(tokens_per_layer: Sequence[float], text_config: Any) -> float:
    return sum(decoder_layer_flops(n, text_config) for n in tokens_per_layer)
