"""DiSA's diffusion-step annealing: how many head denoising steps AR step ``s`` of ``T`` gets.

Early tokens are drawn with little context and need the full diffusion; later ones are
nearly determined by the tokens before them, so fewer steps do (Zhao et al., 2025,
``MAR_DiSA/models/diffloss.py``). ``constant`` is the paper's fixed-``lower`` baseline.
"""

from __future__ import annotations

import math

SCHEDULES = ("linear", "cosine", "two_stage", "constant")


def annealed_steps(s: int, total: int, upper: int, lower: int, schedule: str) -> int:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    frac = s / (total - 1) if total > 1 else 0.0
    if schedule == "linear":
        return lower + math.floor((1 - frac) * (upper - lower) + 1e-9)
    if schedule == "cosine":
        return lower + math.floor((math.cos(math.pi * frac) + 1) / 2 * (upper - lower) + 1e-9)
    if schedule == "two_stage":  # as released (MAR_DiSA diffloss): upper while step < (T - 1) / 2
        return upper if s < (total - 1) / 2 else lower
    return lower
