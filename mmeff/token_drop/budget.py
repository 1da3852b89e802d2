"""Token budgets: the papers' "192 / 128 / 64 of 576" as fractions that carry over to any model.

Every token-reduction config takes ``budget`` either as a fraction in (0, 1] or as one of
the preset names, and resolves it against the model's own image-token count.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

LLAVA15_IMAGE_TOKENS = 576
PRESETS: dict[str, float] = {"192": 192 / 576, "128": 128 / 576, "64": 64 / 576}


def parse_budget(value: Any, plugin: str) -> float | None:
    """``None`` (method's own default), a fraction in (0, 1], or a preset ("192", "128", "64", or those ints)."""
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) in PRESETS:
        return PRESETS[str(value)]  # "64" and 64 alike: command lines parse budget=64 as a number
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*/\s*\d+\s*", value):  # "1/9", as papers write it
        top, bottom = (int(v) for v in value.split("/"))
        value = top / bottom if bottom else value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise ConfigError(
        f"{plugin} budget must be a fraction of the image tokens in (0, 1] (0.25 or 1/9) or one of the presets "
        f"{sorted(PRESETS, key=int, reverse=True)} (of 576, i.e. 1/3, 2/9, 1/9); got {value!r}"
    )


def keep_count(n: int, budget: float) -> int:
    """Tokens kept of ``n`` at a budget: rounded, at least one."""
    return max(1, min(n, round(n * budget)))


def row_counts(image_counts: torch.Tensor, kept: Callable[[int], int]) -> torch.Tensor:
    """``kept(n)`` for each row's count (rows differ on LLaVA-NeXT), as a tensor beside the input."""
    return torch.tensor([kept(int(n)) for n in image_counts.tolist()], dtype=torch.long, device=image_counts.device)


def check_layers(layers: Any, plugin: str) -> tuple[int, ...] | None:
    """``None`` or a strictly increasing tuple of decoder-layer indices >= 1."""
    if layers is None:
        return None
    if not isinstance(layers, (list, tuple)):
        raise ConfigError(f"{plugin} layers must be a list of decoder-layer indices, e.g. [8, 16, 24]; got {layers!r}")
    layers = tuple(int(x) if isinstance(x, np.integer) else x for x in layers)
    if not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise ConfigError(f"{plugin} layers must be a non-empty tuple of ints, got {layers!r}")
    if any(x < 1 for x in layers) or list(layers) != sorted(set(layers)):
        raise ConfigError(f"{plugin} layers must be strictly increasing and >= 1 (decoder layer indices), got {layers}")
    return layers


def check_fraction(value: Any, name: str, plugin: str, *, low_open: bool = False, high: float = 1.0) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and ((0 < value) if low_open else (0 <= value)) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{plugin} {name} must be a number in {bracket}0, {high}], got {value!r}")


def check_int(value: Any, name: str, plugin: str, *, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{plugin} {name} must be an integer >= {minimum}, got {value!r}")
