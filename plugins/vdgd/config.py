"""VDGD's settings: the released defaults (beta=0.1, "min" reduction, greedy choice)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.contrastive.plugin_base import ContrastiveConfig
from mmeff.errors import ConfigError

REDUCTIONS = ("min", "avg", "sum")


@dataclass
class VDGDConfig(ContrastiveConfig):
    """``alpha`` is unused (VDGD has no negative branch); 0 turns the rerank off (plain decoding
    after the description turn)."""

    describe_prompt: str = field(default="Describe the image in detail.", metadata={"help": "step-1 prompt"})
    description_tokens: int = field(default=64, metadata={"help": "length limit of the description"})
    reduce: str = field(default="min", metadata={"help": "over description steps: min KL | avg | sum"})
    prefix: bool = field(default=True, metadata={"help": "put the description before the question as a turn"})

    def validate(self) -> None:
        super().validate()
        if self.separate:
            raise ConfigError("VDGDConfig.separate does not apply: VDGD decodes one branch")
        if not isinstance(self.describe_prompt, str) or not self.describe_prompt.strip():
            raise ConfigError("VDGDConfig.describe_prompt must be a non-empty string")
        if isinstance(self.description_tokens, bool) or not isinstance(self.description_tokens, int) or (
                self.description_tokens < 1):
            raise ConfigError(f"VDGDConfig.description_tokens must be an int >= 1, got {self.description_tokens!r}")
        if self.reduce not in REDUCTIONS:
            raise ConfigError(f"VDGDConfig.reduce must be one of {REDUCTIONS}, got {self.reduce!r}")
        if not isinstance(self.prefix, bool):
            raise ConfigError(f"VDGDConfig.prefix must be True or False, got {self.prefix!r}")
