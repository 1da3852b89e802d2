"""DiSA (Zhao et al., 2025): anneal the per-token diffusion head's steps over the AR steps.

Early tokens get ``upper`` denoising steps, the last ones ``lower`` (linear, cosine,
two-stage or constant schedules, as in ``MAR_DiSA``). The plugin only sets the schedule;
whichever loop runs (plain, or continuous speculative decoding in both its models) uses it,
so it composes with ``continuous_spec``. With it attached, the call's ``diffusion_steps`` is
replaced by the schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmeff.car.schedules import SCHEDULES, annealed_steps
from mmeff.errors import ConfigError
from mmeff.plugin import Plugin, PluginConfig, PluginContext
from mmeff.registry import register_plugin


@dataclass
class DiSAConfig(PluginConfig):
    """``upper``: head steps at the first token (MAR's 50); ``lower``: at the last (5 in the paper)."""

    upper: int = field(default=50, metadata={"help": "diffusion-head steps at the first token, >= 1 (MAR's 50)"})
    lower: int = field(default=5, metadata={"help": "head steps at the last token, in [1, upper] (5 in the paper)"})
    schedule: str = field(default="linear", metadata={
        "help": "upper -> lower over the AR steps: linear, cosine, two_stage (switch at half) or constant (lower)"})

    def validate(self) -> None:
        for name in ("upper", "lower"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.lower > self.upper:
            raise ConfigError(f"lower ({self.lower}) must be <= upper ({self.upper})")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")


@register_plugin
class DiSAPlugin(Plugin):
    name = "disa"
    config_cls = DiSAConfig
    supports = ("continuous_ar",)
    owns = ("head_steps",)
    description = "DiSA: fewer diffusion-head steps for later tokens of continuous-token AR generation"
    config: DiSAConfig

    def attach(self, ctx: PluginContext) -> None:
        self._total = 0

    def schedule(self, total: int, call_steps: int) -> Callable[[int], int]:
        """Head steps at AR step s of ``total`` (the call's own ``diffusion_steps`` is superseded)."""
        c = self.config
        self._total = total
        return lambda s: annealed_steps(s, total, c.upper, c.lower, c.schedule)

    def stats(self) -> dict[str, Any]:
        c = self.config
        return {"upper": c.upper, "lower": c.lower, "schedule": c.schedule}
