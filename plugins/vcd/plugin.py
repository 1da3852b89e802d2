"""VCD (Leng et al., CVPR'24): the negative branch sees the image after DDPM forward noise
in the processor's normalised pixel space; ``(1+a) l - a l_noised`` under the plausibility mask."""

from __future__ import annotations

from typing import Any

import torch

from mmeff.contrastive.decode import Branch
from mmeff.contrastive.ops import add_ddpm_noise
from mmeff.contrastive.plugin_base import ContrastivePlugin
from mmeff.errors import InputError
from mmeff.registry import register_plugin

from .config import VCDConfig


@register_plugin
class VCDPlugin(ContrastivePlugin):
    name = "vcd"
    config_cls = VCDConfig
    description = "VCD: contrast with the prompt on a noised image (visual contrastive decoding)"
    config: VCDConfig

    def negative(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str]) -> Branch:
        pixels = inputs.get("pixel_values")
        if pixels is None:
            raise InputError("vcd needs pixel_values: it contrasts against a noised copy of the image")
        if self.config.noise_seed is None:  # a fresh draw per image, as the released code does
            noised = add_ddpm_noise(pixels, self.config.noise_step)
        else:  # one seeded pattern for every row, so a row's answer does not depend on its batch
            generator = torch.Generator().manual_seed(self.config.noise_seed)
            noised = add_ddpm_noise(pixels, self.config.noise_step, generator, shared=True)
        return Branch.from_inputs({**inputs, "pixel_values": noised})
