"""random_drop's settings, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig
from mmeff.token_drop.budget import check_int, keep_count, parse_budget


@dataclass
class RandomDropConfig(PluginConfig):
    """Before decoder layer ``layer`` (0: the decoder never sees the others), keep a uniformly
    random ``budget`` share of each row's image tokens. Seeded: the same subset every call."""

    budget: float | str = field(default="192", metadata={"help": "fraction kept, or 192/128/64 of 576"})
    layer: int = field(default=0, metadata={"help": "decoder layer before which tokens are dropped"})
    seed: int = field(default=0, metadata={"help": "seed of the subset"})

    def validate(self) -> None:
        if self.budget is None:
            raise ConfigError("random_drop needs a budget (a fraction in (0, 1] or 192/128/64)")
        self._budget = parse_budget(self.budget, "random_drop")
        check_int(self.layer, "layer", "random_drop")
        check_int(self.seed, "seed", "random_drop")

    def kept(self, n: int) -> int:
        return keep_count(n, self._budget) if n else 0
