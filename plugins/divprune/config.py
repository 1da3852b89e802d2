"""DivPrune's settings, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig
from mmeff.token_drop.budget import keep_count, parse_budget

#: the released SUBSET_RATIO (``run_Divprune.sh``): 56 of LLaVA-1.5's 576 image tokens
RELEASED_RATIO = 0.098


@dataclass
class DivPruneConfig(PluginConfig):
    """Before decoder layer 0, keep a ``budget`` share of each row's image tokens: the greedy max-min
    diverse subset of their input embeddings under cosine distance (Alvar et al., CVPR'25)."""

    budget: float | str = field(default=RELEASED_RATIO, metadata={
        "help": "fraction kept (released: 0.098), or 192/128/64 of 576"})

    def validate(self) -> None:
        if self.budget is None:
            raise ConfigError("divprune needs a budget (a fraction in (0, 1], e.g. 0.098 as released, or 192/128/64)")
        self._budget = parse_budget(self.budget, "divprune")

    def kept(self, n: int) -> int:
        return keep_count(n, self._budget) if n else 0
