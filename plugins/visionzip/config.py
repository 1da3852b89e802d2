"""VisionZip's settings, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig
from mmeff.token_drop.budget import check_int, keep_count, parse_budget

#: the released presets 162+30, 108+20, 54+10 (of 576) all give contextual tokens 30/192 of the total
CONTEXTUAL_SHARE = 30 / 192
#: the Qwen2.5-VL release takes both counts as fractions of each image's tokens: 0.65 + 0.05, 0.45 + 0.05
MERGED_CONTEXTUAL_FRACTION = 0.05


@dataclass
class VisionZipConfig(PluginConfig):
    """Keep ``dominant`` patches with the most CLS attention and ``contextual`` merged tokens.

    By default both come from ``budget`` (a fraction of the image tokens or "192"/"128"/"64"):
    the released 162+30 / 108+20 / 54+10 split for 576 tokens, the same fractions otherwise.
    Give ``dominant`` and ``contextual`` to set the counts yourself.
    """

    budget: float | str | None = field(default="192", metadata={"help": "fraction kept, or 192/128/64 of 576"})
    dominant: int | None = field(default=None, metadata={"help": "dominant tokens (with contextual: overrides budget)"})
    contextual: int | None = field(default=None, metadata={"help": "contextual tokens"})
    cls_token: bool = field(default=True, metadata={
        "help": "pass the CLS token to the LLM in one of the kept places, as released (LLaVA's CLIP towers)"})

    def validate(self) -> None:
        if not isinstance(self.cls_token, bool):
            raise ConfigError(f"visionzip cls_token must be True or False, got {self.cls_token!r}")
        if (self.dominant is None) != (self.contextual is None):
            raise ConfigError("visionzip: give both dominant and contextual, or neither (then budget decides)")
        if self.dominant is not None:
            check_int(self.dominant, "dominant", "visionzip", minimum=1)
            check_int(self.contextual, "contextual", "visionzip")
        self._budget = parse_budget(self.budget, "visionzip")
        if self._budget is None and self.dominant is None:
            raise ConfigError("visionzip needs a budget, or dominant and contextual counts")

    def counts(self, n: int) -> tuple[int, int]:
        """(dominant, contextual) for a tower with ``n`` patches."""
        if self.dominant is not None:
            dominant = min(self.dominant, n)
            return dominant, min(self.contextual, n - dominant)
        total = keep_count(n, self._budget)
        contextual = round(total * CONTEXTUAL_SHARE) if total < n else 0
        return total - contextual, contextual

    def merged_counts(self, n: int) -> tuple[int, int]:
        """(dominant, contextual) for one image or video of ``n`` merged tokens (Qwen-VL): as the Qwen2.5-VL
        release, a budget keeps ``max(int(0.05 n), 1)`` contextual tokens and the rest dominant."""
        if self.dominant is not None:
            return self.counts(n)
        total = keep_count(n, self._budget)
        if total >= n:
            return n, 0
        contextual = min(max(int(MERGED_CONTEXTUAL_FRACTION * n), 1), total - 1)
        return total - contextual, contextual
