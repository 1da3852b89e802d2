"""ToMe's settings, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig
from mmeff.token_drop.budget import check_int, keep_count, parse_budget


@dataclass
class ToMeConfig(PluginConfig):
    """Merge tokens after every vision layer up to the feature layer.

    ``budget`` (a fraction or "192"/"128"/"64") sets how many image tokens reach the decoder;
    the merges are spread so that each layer keeps the same fraction. Or give ``r``: tokens
    merged per layer, as in the ToMe paper (r=16 over 24 CLIP layers leaves 192 of 576).
    ``proportional_attention`` adds log(size) to the attention logits, as ToMe does.
    """

    budget: float | str | None = field(default="192", metadata={"help": "fraction kept, or 192/128/64 of 576"})
    r: int | None = field(default=None, metadata={"help": "tokens merged per layer (overrides budget)"})
    proportional_attention: bool = field(default=True, metadata={"help": "weight attention by merged size"})

    def validate(self) -> None:
        if self.r is not None:
            check_int(self.r, "r", "tome")
        self._budget = parse_budget(self.budget, "tome")
        if self._budget is None and self.r is None:
            raise ConfigError("tome needs a budget or r (tokens merged per layer)")
        if not isinstance(self.proportional_attention, bool):
            raise ConfigError(f"tome proportional_attention must be True or False, got {self.proportional_attention!r}")

    def targets(self, n: int, points: int) -> list[int]:
        """Patches left after each of ``points`` merge points, starting from ``n``."""
        if self.r is not None:
            return [max(1, n - self.r * (p + 1)) for p in range(points)]
        final = keep_count(n, self._budget)
        ratio = final / n
        return [max(final, round(n * ratio ** ((p + 1) / points))) for p in range(points - 1)] + [final]
