"""How image tokens are drawn: one definition shared by plain decoding and every accelerated loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from .ops import guide, sample, warp


@dataclass(frozen=True)
class SamplingConfig:
    guidance_scale: float | None = None  # None: no unconditional rows at all
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.guidance_scale is not None and not self.guidance_scale > 0:
            raise InputError(f"guidance_scale must be > 0 or None, got {self.guidance_scale}")
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1] or None, got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Session-row logits ``(rows, ..., K)`` -> the distribution tokens are drawn from ``(B, ..., K)``.

        Guidance first, then warping (as transformers orders its processors). Greedy decoding is
        the one-hot argmax, so speculative acceptance reduces to "draft == argmax".
        """
        guided = guide(logits, self.guidance_scale)
        if self.greedy:
            return torch.nn.functional.one_hot(guided.argmax(-1), guided.shape[-1]).float()
        return warp(guided, self.temperature, self.top_k, self.top_p).softmax(-1)

    def draw(self, probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return sample(probs, generator, greedy=self.greedy)
