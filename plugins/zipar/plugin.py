"""ZipAR (He et al., 2024): a row of the image grid starts once ``window`` tokens of the row above
exist, so up to ``rows`` tokens are decoded per forward. Training-free; nearby rows condition on
a partial row above, which is where its (small) quality cost comes from. The loop is
``mmeff.ar.zipar.ZipARDecoder``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mmeff.ar.plugin_base import DecodeLoopPlugin
from mmeff.ar.sampling import SamplingConfig
from mmeff.ar.session import DecodeSession
from mmeff.ar.zipar import PROXIES, ZipARDecoder
from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig
from mmeff.registry import register_plugin


@dataclass
class ZipARConfig(PluginConfig):
    """``window``: tokens of the row above that must exist before a row starts (8 in the released
    LlamaGen code; ``window >= columns`` is plain raster decoding).

    The defaults follow the released LlamaGen code (``generate_zipar.py``). ``full_first_row``:
    row 0 is decoded alone and its real last token opens row 1 (``False``: row 1 opens once row 0
    holds ``window`` tokens, like every other row: ``columns - window`` fewer forwards, one proxy
    more). Row ``r + 1`` (``r >= 1``) opens through a proxy fed at the position of ``(r, W - 1)``,
    which is not generated yet; ``proxy`` picks the token: ``"row_above"`` is the release's, the
    latest token of row ``r - 1`` (``(r - 1, W - 1)`` once that row is complete); ``"own_row"`` is
    row ``r``'s latest token. ``proxy_visible``: the rows below see the proxy until row ``r``'s real
    last token replaces it, as in the release's static cache (``False``: only the proxy's own query
    sees it). ``full_first_row=False, proxy="own_row", proxy_visible=False`` is mmeff's earlier
    variant.

    Known differences from the release: cache slots of tokens not generated yet are masked (the
    release's position mask lets queries read them as zero-filled static-cache entries);
    ``window >= columns`` decodes in raster order (the release keeps the proxy as a code there) and
    ``window = 1`` works (the release's bookkeeping needs ``window >= 2``); grids need not be square.
    """

    window: int = field(default=8, metadata={
        "help": "tokens of the row above needed before a row starts, >= 1 (8 as released; >= columns: raster)"})
    full_first_row: bool = field(default=True, metadata={
        "help": "row 0 decoded alone, its last token opens row 1 (as released); False: row 1 opens after window"})
    proxy: str = field(default="row_above", metadata={
        "help": "token opening row r + 1: \"row_above\" (row r - 1's latest, as released) or \"own_row\" (row r's)"})
    proxy_visible: bool = field(default=True, metadata={
        "help": "later rows see the proxy until row r's real last token replaces it (as released); False: they don't"})

    def validate(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"window must be an integer >= 1, got {self.window!r}")
        for name in ("full_first_row", "proxy_visible"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.proxy not in PROXIES:
            raise ConfigError(f"proxy must be one of {list(PROXIES)}, got {self.proxy!r}")


@register_plugin
class ZipARPlugin(DecodeLoopPlugin):
    name = "zipar"
    config_cls = ZipARConfig
    description = "ZipAR: next-set decoding, the next grid row starts once a window of the row above exists"
    config: ZipARConfig

    def decode(self, session: DecodeSession, sampling: SamplingConfig, generator: torch.Generator | None
               ) -> torch.Tensor:
        cfg = self.config
        decoder = ZipARDecoder(cfg.window, cfg.full_first_row, cfg.proxy, cfg.proxy_visible)
        codes = decoder.decode(session, sampling, generator)
        self._stats = {"window": cfg.window, **decoder.stats.as_dict()}
        return codes
