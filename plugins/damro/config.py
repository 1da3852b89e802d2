"""DAMRO's settings: ``run_pope.py``'s alpha=2, top-k=10 (of 576 patches), beta=0.1."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.contrastive.plugin_base import ContrastiveConfig
from mmeff.errors import ConfigError


@dataclass
class DAMROConfig(ContrastiveConfig):
    alpha: float = field(default=2.0, metadata={
        "help": "contrast strength, >= 0 (0 = plain decoding); 2 as in the release's run_pope.py"})
    k: int = field(default=10, metadata={"help": "outlier patch tokens the negative branch keeps (>= 1)"})

    def validate(self) -> None:
        super().validate()
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"DAMROConfig.k must be an int >= 1, got {self.k!r}")
