"""The token-reduction methods the ``tokens`` benchmark compares, configured for a budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: 192 / 128 / 64 of 576 image tokens
BUDGETS: dict[str, float] = {"1/3": 1 / 3, "2/9": 2 / 9, "1/9": 1 / 9}
VISION_SIDE = ("visionzip", "tome")
METHODS = ("visionzip", "tome", "mustdrop", "pyramid_drop", "fastv", "divprune", "random_drop")


@dataclass(frozen=True)
class Method:
    label: str
    plugin: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    budget: str | None = None


def method_at(plugin: str, budget: str) -> Method:
    """``plugin`` set up to keep the ``budget`` share of image tokens.

    Hard counts (what reaches the last decoder layer) for VisionZip, ToMe, FastV and
    random_drop; MustDrop's budget is its own convention, the average over decoder layers;
    PyramidDrop keeps ratio³ after its last stage (ratio = budget^(1/3)), so its layer
    average is well above the budget. Reports show both counts for every method.
    """
    fraction = BUDGETS[budget]
    if plugin == "pyramid_drop":
        options: dict[str, Any] = {"ratio": round(fraction ** (1 / 3), 4)}
    else:
        options = {"budget": fraction}
    return Method(f"{plugin} @{budget}", plugin, options, budget)


def all_methods(plugins: tuple[str, ...] = METHODS, budgets: tuple[str, ...] = tuple(BUDGETS)) -> list[Method]:
    return [method_at(p, b) for b in budgets for p in plugins]
