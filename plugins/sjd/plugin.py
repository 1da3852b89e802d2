"""SJD (Teng et al., 2024): a window of drafts refined by Jacobi iteration and accepted by the
speculative criterion, so several image tokens are committed per forward while the samples
keep the model's distribution. The loop itself is ``mmeff.ar.jacobi.JacobiDecoder``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mmeff.ar.jacobi import INITS, JacobiDecoder
from mmeff.ar.plugin_base import DecodeLoopPlugin
from mmeff.ar.sampling import SamplingConfig
from mmeff.ar.session import DecodeSession
from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig
from mmeff.registry import register_plugin


@dataclass
class SJDConfig(PluginConfig):
    """``window``: tokens per forward at most (last committed token + ``window - 1`` drafts; 16 in the
    paper). ``init``: first guess for new draft positions, ``"random"`` codes (paper), or copies of
    the left (``"repeat_left"``) or upper (``"repeat_above"``) neighbour. Drafting runs for image
    positions in ``[start, stop)``; elsewhere one token per forward (the first token comes from the
    prompt's forward, so ``start=1`` wastes nothing on it).
    """

    window: int = field(default=16, metadata={
        "help": "tokens per forward at most, >= 1: last committed token + window - 1 drafts (16 in the paper)"})
    init: str = field(default="random", metadata={
        "help": "new drafts' first guess: \"random\" codes (paper), \"repeat_left\" or \"repeat_above\" neighbour"})
    start: int = field(default=1, metadata={
        "help": "first image position drafted, >= 0; one token per forward before it (1 wastes nothing)"})
    stop: int | None = field(default=None, metadata={
        "help": "image position (> start) where drafting ends, exclusive; None = drafts to the last token"})

    def validate(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"window must be an integer >= 1, got {self.window!r}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {list(INITS)}, got {self.init!r}")
        if not isinstance(self.start, int) or self.start < 0:
            raise ConfigError(f"start must be an integer >= 0, got {self.start!r}")
        if self.stop is not None and (not isinstance(self.stop, int) or self.stop <= self.start):
            raise ConfigError(f"stop must be None or an integer > start ({self.start}), got {self.stop!r}")


@register_plugin
class SJDPlugin(DecodeLoopPlugin):
    name = "sjd"
    config_cls = SJDConfig
    description = "speculative Jacobi decoding: several image tokens per forward, distribution preserved"
    config: SJDConfig

    def decoder(self, session: DecodeSession) -> JacobiDecoder:
        c = self.config
        return JacobiDecoder(c.window, c.init, (c.start, c.stop))

    def decode(self, session: DecodeSession, sampling: SamplingConfig, generator: torch.Generator | None
               ) -> torch.Tensor:
        decoder = self.decoder(session)
        codes = decoder.decode(session, sampling, generator)
        self._stats = {"window": self.config.window, **decoder.stats.as_dict()}
        return codes
