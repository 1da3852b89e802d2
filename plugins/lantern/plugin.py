"""LANTERN (Jang et al., 2024) on SJD drafts: visual codes are interchangeable with their latent
neighbours, so a draft is accepted against ``p~(x) = p(x) +`` the probability of its ``k`` nearest
codes while that borrowed mass stays within ``delta``. A rejected draft is resampled as in the
released code: ``p`` loses the draft's ``k + 1`` nearest codes, then SJD's residual against the
draft's own distribution. The released speed-ups also rely on a trained EAGLE drafter; the
relaxation is the training-free part, applied here to SJD's Jacobi drafts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mmeff.ar.jacobi import REJECTIONS, JacobiDecoder, Relaxation, neighbour_table
from mmeff.ar.session import DecodeSession
from mmeff.errors import ConfigError
from mmeff.registry import register_plugin

from ..sjd.plugin import SJDConfig, SJDPlugin


@dataclass
class LanternConfig(SJDConfig):
    """SJD's options plus ``k`` (neighbours per code; released default 1000, capped at the codebook),
    ``delta`` (largest probability mass borrowed from them; released default 0.1) and ``rejection``.

    ``rejection``: what a rejected draft x is resampled from. ``"release"`` (default) follows the
    released code (``evaluate_posterior`` of its LANTERN models): whenever x's nearest code fits the
    budget, ``p`` is zeroed at x's ``k + 1`` nearest codes, then the residual ``norm(max(0, p - q))``
    against the draft's distribution ``q`` (the release's drafts with ``q = 1`` are SJD's one-hot
    initial drafts). ``"borrowed"`` zeroes only the codes x borrowed from and renormalises ``p``
    first; for one-hot drafts the output is then ``p`` with exactly that mass moved onto x
    (total variation <= ``delta``), while ``"release"`` also drops the unused neighbours' mass.
    Known differences from the release: with ``delta = 0`` nothing is relaxed or zeroed (the release
    still zeroes the neighbourhood when the nearest code has probability 0), if nothing is left the
    plain SJD residual is used (the release samples uniformly), and LANTERN++'s ``delta > 1`` (lambda)
    mode and its static-tree rule (zeroing the drafter's ``q`` instead of ``p``) are not provided.
    """

    k: int = field(default=1000, metadata={
        "help": "latent neighbours per code to borrow from, >= 0 (released default 1000, capped at the codebook)"})
    delta: float = field(default=0.1, metadata={
        "help": "largest probability mass borrowed from neighbours, in [0, 1] (released 0.1; 0: nothing relaxed)"})
    rejection: str = field(default="release", metadata={
        "help": "after a rejection: \"release\" (zero the k + 1 nearest codes, as released) or \"borrowed\" (lenders)"})

    def validate(self) -> None:
        super().validate()
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ConfigError(f"k must be an integer >= 0, got {self.k!r}")
        if not isinstance(self.delta, (int, float)) or not 0 <= self.delta <= 1:
            raise ConfigError(f"delta must be in [0, 1], got {self.delta!r}")
        if self.rejection not in REJECTIONS:
            raise ConfigError(f"rejection must be one of {list(REJECTIONS)}, got {self.rejection!r}")


@register_plugin
class LanternPlugin(SJDPlugin):
    name = "lantern"
    config_cls = LanternConfig
    description = "LANTERN: SJD with acceptance relaxed over latent neighbours of each code (TV <= delta)"
    config: LanternConfig

    def __init__(self, config: LanternConfig) -> None:
        super().__init__(config)
        self._table: tuple[int, torch.Tensor] | None = None

    def _neighbours(self, session: DecodeSession) -> torch.Tensor:
        """The (K, k+1) table (the release zeroes one code more than it lends from), built once per adapter."""
        key = id(session.adapter)
        if self._table is None or self._table[0] != key:
            self._table = (key, neighbour_table(session.adapter.code_vectors(), self.config.k + 1))
        return self._table[1]

    def decoder(self, session: DecodeSession) -> JacobiDecoder:
        c = self.config
        relaxation = Relaxation(self._neighbours(session), c.delta, c.k, c.rejection)
        return JacobiDecoder(c.window, c.init, (c.start, c.stop), relaxation)

    def decode(self, session, sampling, generator):
        codes = super().decode(session, sampling, generator)
        self._stats.update(k=min(self.config.k, session.adapter.codebook_size - 1), delta=self.config.delta)
        return codes
