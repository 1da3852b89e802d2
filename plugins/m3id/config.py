"""M3ID's settings. M3ID has no official code; the reimplementations read start ``t`` at 1 at the first
answer token and contrast at every step (no confidence gate): those are the defaults. Counting the
prompt (``count_prompt``) and a gate (``threshold`` < 1) are options."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.contrastive.plugin_base import ContrastiveConfig
from mmeff.errors import ConfigError


@dataclass
class M3IDConfig(ContrastiveConfig):
    """``alpha`` scales M3ID's own weight ``w_t = exp(lam * t) - 1`` (1 = the paper; 0 = plain decoding)."""

    lam: float = field(default=0.02, metadata={"help": "forgetting rate lambda > 0"})
    threshold: float = field(default=1.0, metadata={
        "help": "contrast only where max p < threshold, in (0, 1]; 1 = at every step, as the reimplementations"})
    count_prompt: bool = field(default=False, metadata={
        "help": "t also counts the prompt's text tokens (+1 for the image); off: t = 1 at the first answer token"})

    def validate(self) -> None:
        super().validate()
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or self.lam <= 0:
            raise ConfigError(f"M3IDConfig.lam must be a number > 0, got {self.lam!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not (
                0 < self.threshold <= 1):
            raise ConfigError(f"M3IDConfig.threshold must be in (0, 1], got {self.threshold!r}")
        if not isinstance(self.count_prompt, bool):
            raise ConfigError(f"M3IDConfig.count_prompt must be True or False, got {self.count_prompt!r}")
