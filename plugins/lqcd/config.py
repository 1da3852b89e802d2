"""LQCD's settings: a leading query given by the user, or derived from each prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.contrastive.plugin_base import ContrastiveConfig
from mmeff.errors import ConfigError


@dataclass
class LQCDConfig(ContrastiveConfig):
    leading: str | list[str] | None = field(
        default=None, metadata={"help": "the leading query (one for all prompts, or one per prompt); None derives it"})
    tag: str = field(default="right?", metadata={"help": "confirmation tag of the derived leading form"})

    def validate(self) -> None:
        super().validate()
        items = [self.leading] if isinstance(self.leading, str) else self.leading
        if items is not None and (not isinstance(items, (list, tuple)) or not items
                                  or not all(isinstance(q, str) and q.strip() for q in items)):
            raise ConfigError("LQCDConfig.leading must be None, a non-empty string or a list of non-empty strings")
        if not isinstance(self.tag, str) or not self.tag.strip():
            raise ConfigError("LQCDConfig.tag must be a non-empty string such as 'right?'")
