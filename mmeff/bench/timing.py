"""Prefill and per-token decode timing with a manual cache loop (no sampling overhead)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    prefill_s: list[float]
    decode_per_token_s: list[float]

    @property
    def prefill_median(self) -> float:
        return statistics.median(self.prefill_s)

    @property
    def decode_median(self) -> float:
        return statistics.median(self.decode_per_token_s)


@torch.no_grad()
def time_prefill_and_decode(model, inputs: dict, *, decode_tokens: int, before_call=None,
                            positions: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
    """One run: seconds for the prefill forward, mean seconds per greedy decode step.

    ``positions(mask)`` gives the appended token's position ids (an adapter's ``step_positions``
    for M-RoPE models); by default the mask's count, one row of ids."""
    if before_call is not None:
        before_call()
    start = time.perf_counter()
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    prefill = time.perf_counter() - start
    cache = out.cache
    mask = inputs["attention_mask"]
    position = int(mask.sum(-1).max()) - 1
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    start = time.perf_counter()
    for _ in range(decode_tokens):
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        position += 1
        ids = torch.full_like(token, position) if positions is None else positions(mask)
        out = model(input_ids=token, attention_mask=mask, position_ids=ids,
                    cache=cache, use_cache=True, logits_to_keep=1)
        cache = out.cache
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    decode = (time.perf_counter() - start) / max(decode_tokens, 1)
    return prefill, decode
