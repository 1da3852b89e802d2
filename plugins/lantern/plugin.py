"""LANTERN (Jang et al., 2024) on SJD drafts: visual codes are interchangeable with their latent
neighbours, so a draft is accepted against ``p~(x) = p(x) +`` the probability of its ``k`` nearest
codes while that borrowed mass stays within ``delta`` (total variation to the model's
distribution <= ``delta``). The released speed-ups also rely on a trained EAGLE drafter; the
relaxation is the training-free part, applied here to SJD's Jacobi drafts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmeff.ar.jacobi import JacobiDecoder, Relaxation, neighbour_table
from mmeff.ar.session import DecodeSession
from mmeff.errors import ConfigError
from mmeff.registry import register_plugin

from ..sjd.plugin import SJDConfig, SJDPlugin


@dataclass
class LanternConfig(SJDConfig):
    """SJD's options plus ``k`` (neighbours per code; released default 1000, capped at the codebook)
    and ``delta`` (largest probability mass borrowed from them; released default 0.1)."""

    k: int = 1000
    delta: float = 0.1

    def validate(self) -> None:
        super().validate()
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ConfigError(f"k must be an integer >= 0, got {self.k!r}")
        if not isinstance(self.delta, (int, float)) or not 0 <= self.delta <= 1:
            raise ConfigError(f"delta must be in [0, 1], got {self.delta!r}")


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
        """The (K, k) table, built once per adapter from its codebook vectors."""
        key = id(session.adapter)
        if self._table is None or self._table[0] != key:
            self._table = (key, neighbour_table(session.adapter.code_vectors(), self.config.k))
        return self._table[1]

    def decoder(self, session: DecodeSession) -> JacobiDecoder:
        c = self.config
        return JacobiDecoder(c.window, c.init, (c.start, c.stop), Relaxation(self._neighbours(session), c.delta))

    def decode(self, session, sampling, generator):
        codes = super().decode(session, sampling, generator)
        self._stats.update(k=min(self.config.k, session.adapter.codebook_size - 1), delta=self.config.delta)
        return codes
