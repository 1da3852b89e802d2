"""M3ID's settings: forgetting rate 0.02 and the 0.3 confidence gate of the reimplementations."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.contrastive.plugin_base import ContrastiveConfig
from mmeff.errors import ConfigError


@dataclass
class M3IDConfig(ContrastiveConfig):
    """``alpha`` scales M3ID's own weight ``w_t = exp(lam * t) - 1`` (1 = the paper; 0 = plain decoding)."""

    lam: float = field(default=0.02, metadata={"help": "forgetting rate lambda > 0"})
    threshold: float = field(default=0.3, metadata={"help": "contrast only where max p < threshold, in (0, 1]"})
    count_prompt: bool = field(default=True, metadata={
        "help": "t also counts the prompt's text tokens (+1 for the image), as the reimplementations do"})

    def validate(self) -> None:
        super().validate()
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or self.lam <= 0:
            raise ConfigError(f"M3IDConfig.lam must be a number > 0, got {self.lam!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not (
                0 < self.threshold <= 1):
            raise ConfigError(f"M3IDConfig.threshold must be in (0, 1], got {self.threshold!r}")
        if not isinstance(self.count_prompt, bool):
            raise ConfigError(f"M3IDConfig.count_prompt must be True or False, got {self.count_prompt!r}")
