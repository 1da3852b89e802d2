"""FastV's settings, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.plugin import PluginConfig
from mmeff.token_drop.budget import check_fraction, check_int, keep_count, parse_budget


@dataclass
class FastVConfig(PluginConfig):
    """Before decoder layer ``k``, keep the ``1 - ratio`` fraction of image tokens that the last
    prompt token attends to most in layer ``k - 1`` (the paper's K=2, R=50%).

    ``budget`` (a fraction or "192"/"128"/"64") overrides ``ratio``: keep exactly that share.
    """

    k: int = field(default=2, metadata={"help": "first decoder layer that sees the reduced tokens (>= 1)"})
    ratio: float = field(default=0.5, metadata={"help": "fraction of image tokens dropped, in [0, 1)"})
    budget: float | str | None = field(default=None, metadata={"help": "fraction kept, or 192/128/64 of 576"})

    def validate(self) -> None:
        check_int(self.k, "k", "fastv", minimum=1)
        check_fraction(self.ratio, "ratio", "fastv", high=0.999999)
        self._budget = parse_budget(self.budget, "fastv")

    def kept(self, n: int) -> int:
        fraction = self._budget if self._budget is not None else 1 - self.ratio
        return keep_count(n, fraction) if n else 0
