"""VCD's settings: the eval script's alpha=1, beta=0.1 and noise step 500 of 1000."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.contrastive.ops import DDPM_STEPS
from mmeff.contrastive.plugin_base import ContrastiveConfig
from mmeff.errors import ConfigError


@dataclass
class VCDConfig(ContrastiveConfig):
    noise_step: int = field(default=500, metadata={"help": f"DDPM forward step in [0, {DDPM_STEPS})"})
    noise_seed: int | None = field(default=0, metadata={"help": "seed of the noise (None: torch's global RNG)"})

    def validate(self) -> None:
        super().validate()
        if isinstance(self.noise_step, bool) or not isinstance(self.noise_step, int) or not (
                0 <= self.noise_step < DDPM_STEPS):
            raise ConfigError(f"VCDConfig.noise_step must be an int in [0, {DDPM_STEPS}), got {self.noise_step!r}")
        if self.noise_seed is not None and (isinstance(self.noise_seed, bool) or not isinstance(self.noise_seed, int)):
            raise ConfigError(f"VCDConfig.noise_seed must be an int or None, got {self.noise_seed!r}")
