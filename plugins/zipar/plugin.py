"""ZipAR (He et al., 2024): a row of the image grid starts once ``window`` tokens of the row above
exist, so up to ``rows`` tokens are decoded per forward. Training-free; nearby rows condition on
a partial row above, which is where its (small) quality cost comes from. The loop is
``mmeff.ar.zipar.ZipARDecoder``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmeff.ar.plugin_base import DecodeLoopPlugin
from mmeff.ar.sampling import SamplingConfig
from mmeff.ar.session import DecodeSession
from mmeff.ar.zipar import ZipARDecoder
from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig
from mmeff.registry import register_plugin


@dataclass
class ZipARConfig(PluginConfig):
    """``window``: tokens of the row above that must exist before a row starts (8 in the released
    LlamaGen code; ``window >= columns`` is plain raster decoding)."""

    window: int = 8

    def validate(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"window must be an integer >= 1, got {self.window!r}")


@register_plugin
class ZipARPlugin(DecodeLoopPlugin):
    name = "zipar"
    config_cls = ZipARConfig
    description = "ZipAR: next-set decoding, the next grid row starts once a window of the row above exists"
    config: ZipARConfig

    def decode(self, session: DecodeSession, sampling: SamplingConfig, generator: torch.Generator | None
               ) -> torch.Tensor:
        decoder = ZipARDecoder(self.config.window)
        codes = decoder.decode(session, sampling, generator)
        self._stats = {"window": self.config.window, **decoder.stats.as_dict()}
        return codes
