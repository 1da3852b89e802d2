"""The *ideal* a token-reduction method could reach: the unmodified decoder on the tokens it keeps.

A method's speed-up is judged against the limit its own token counts set, so the report shows how
much the hooks, the ranking and the re-layout cost on top. The ideal prefill is the baseline's
non-decoder time (vision tower, embedding, feature merge, position ids: the unmodified forward with
its decoder layers taken out, timed) plus the decoder's time on the kept tokens, *measured*: the
unmodified model on a text-only sequence of each length a layer holds, one layer's share being
``1 / layers`` of that run (decoder layers are alike), summed over the layers.
The ideal decode step is measured on a KV cache as long as the method's mean cache length, so the
gap per layer is the hook overhead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .timing import time_prefill_and_decode


def text_only_inputs(inputs: dict[str, Any], image_token_id: int, length: int) -> dict[str, torch.Tensor]:
    """A batch-1 prompt of ``length`` text tokens (the prompt's own text ids, cycled): decoder cost only."""
    ids = inputs["input_ids"][0]
    text = ids[ids != image_token_id]
    seq = text.repeat(length // text.numel() + 1)[:length][None]
    out = {"input_ids": seq, "attention_mask": torch.ones_like(seq)}
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.zeros_like(seq, dtype=inputs["mm_token_type_ids"].dtype)
    return out


def time_length(model, inputs: dict[str, Any], image_token_id: int, length: int, *, decode_tokens: int,
                positions: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, float]:
    """One run of the unmodified model on ``length`` text tokens: (prefill s, decode s/token)."""
    batch = text_only_inputs(inputs, image_token_id, length)
    return time_prefill_and_decode(model, batch, decode_tokens=decode_tokens, positions=positions)


@contextmanager
def without_decoder_layers(language_model: torch.nn.Module) -> Iterator[None]:
    """The model runs everything but its decoder layers (timing the rest of a forward)."""
    saved = language_model.layers
    language_model.layers = torch.nn.ModuleList()
    try:
        yield
    finally:
        language_model.layers = saved


def time_other(model, language_model: torch.nn.Module, inputs: dict[str, Any]) -> float:
    """Seconds of one unmodified prefill without its decoder layers: vision tower, embedding, merge, positions."""
    with without_decoder_layers(language_model), torch.no_grad():
        start = time.perf_counter()
        model(**inputs, use_cache=True, logits_to_keep=1)
        return time.perf_counter() - start


def ideal_lengths(layer_tokens: list[float], kv_tokens: list[float]) -> tuple[list[int], int]:
    """The text-only lengths to measure the prefill at (each distinct per-layer sequence length) and the
    decode cache length (the mean over layers)."""
    return sorted({round(n) for n in layer_tokens}), round(sum(kv_tokens) / len(kv_tokens))


def ideal_row(layer_tokens: list[float], kv_tokens: list[float], other: float, base_prefill: float,
              measured: dict[int, tuple[float, float]], prefill: float, decode: float) -> dict[str, Any]:
    """The ideal columns of one method: ideal times and speed-up, efficiency (ideal / measured prefill
    time), and the decode-step overhead per layer in microseconds. ``other``: the non-decoder seconds."""
    layers = len(layer_tokens)
    decoder = sum(measured[round(n)][0] for n in layer_tokens) / layers
    ideal_prefill = other + decoder
    ideal_decode = measured[ideal_lengths(layer_tokens, kv_tokens)[1]][1]
    return {
        "ideal_prefill_ms": ideal_prefill * 1e3,
        "ideal_prefill_speedup": base_prefill / ideal_prefill,
        "ideal_kind": "measured" if len({round(n) for n in layer_tokens}) == 1 else "per-layer",
        "prefill_efficiency": ideal_prefill / prefill,
        "ideal_decode_ms_per_token": ideal_decode * 1e3,
        "decode_overhead_us_per_layer": (decode - ideal_decode) / layers * 1e6,
    }
