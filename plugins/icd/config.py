"""ICD's settings: the released scripts' alpha=1, beta=0.1 and disturbance prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.contrastive.plugin_base import ContrastiveConfig
from mmeff.errors import ConfigError

DISTURBANCE = "You are a confused objects detector to provide a fuzzy overview or impression of the image."


@dataclass
class ICDConfig(ContrastiveConfig):
    instruction: str = field(default=DISTURBANCE, metadata={"help": "the disturbance system prompt"})

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ConfigError("ICDConfig.instruction must be a non-empty string (the disturbance prompt)")
