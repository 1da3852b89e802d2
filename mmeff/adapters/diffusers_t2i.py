"""Diffusers Stable Diffusion text-to-image pipelines: SD 1.x/2.x, SD-Turbo and SDXL.

Modules are looked up in the pipeline's ``components`` dict rather than through attribute
chains, so a scheduler or VAE swapped in by the user after wrapping is what plugins see.
diffusers is imported only when the object already comes from it: wrapping a VLM never
pays diffusers' import time.
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn as nn

from ..errors import InputError
from ..registry import register_adapter
from .base import Adapter

TEXT_ENCODER_KEYS = ("text_encoder", "text_encoder_2")
TOKENIZER_KEYS = ("tokenizer", "tokenizer_2")
#: SD and SDXL ``check_inputs`` reject heights and widths that are not multiples of 8
PIPELINE_SIZE_MULTIPLE = 8


def _from_diffusers(obj: Any) -> bool:
    return any(c.__module__.split(".")[0] == "diffusers" for c in type(obj).__mro__)


@register_adapter
class DiffusersT2IAdapter(Adapter):
    key = "diffusers_t2i"
    family = "t2i"
    description = "diffusers StableDiffusionPipeline / StableDiffusionXLPipeline (SD 1.x, 2.x, SD-Turbo, SDXL)"

    def __init__(self, obj: Any, processor: Any = None) -> None:
        super().__init__(obj, processor)
        self.pipeline = obj

    @classmethod
    def matches(cls, obj: Any) -> bool:
        if not _from_diffusers(obj):
            return False
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

        if not isinstance(obj, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
            return False
        components = obj.components
        return (
            isinstance(components.get("unet"), UNet2DConditionModel)
            and isinstance(components.get("vae"), nn.Module)
            and any(isinstance(components.get(k), nn.Module) for k in TEXT_ENCODER_KEYS)
        )

    # -- modules -------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, Any]:
        """Read live on every access, so later component swaps are seen."""
        return self.pipeline.components

    @property
    def denoiser(self) -> nn.Module:
        return self.components["unet"]

    @property
    def text_encoders(self) -> list[nn.Module]:
        """``[text_encoder]`` for SD, ``[text_encoder, text_encoder_2]`` for SDXL (absent ones skipped)."""
        components = self.components
        return [components[k] for k in TEXT_ENCODER_KEYS if components.get(k) is not None]

    @property
    def tokenizers(self) -> list[Any]:
        components = self.components
        return [components[k] for k in TOKENIZER_KEYS if components.get(k) is not None]

    @property
    def scheduler(self) -> Any:
        return self.components["scheduler"]

    @property
    def vae(self) -> nn.Module:
        return self.components["vae"]

    def hook_roots(self) -> list[nn.Module]:
        roots = [self.denoiser, self.vae, *self.text_encoders]
        return list({id(m): m for m in roots}.values())  # one module shared twice is one root

    # -- facts ---------------------------------------------------------------------------
    @property
    def is_sdxl(self) -> bool:
        """SDXL needs pooled text embeddings and size/crop ids, so plugins calling it pass more arguments."""
        from diffusers import StableDiffusionXLPipeline

        return isinstance(self.pipeline, StableDiffusionXLPipeline)

    @property
    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        factor = getattr(self.pipeline, "vae_scale_factor", None)
        return int(factor or 2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def size_multiple(self) -> int:
        """Heights/widths must divide by this: the VAE's downsampling and the pipeline's own check."""
        return math.lcm(self.vae_scale_factor, PIPELINE_SIZE_MULTIPLE)

    @property
    def default_size(self) -> int:
        """The pipeline's default height and width in pixels (what ``height=None`` gives)."""
        return int(self.denoiser.config.sample_size) * self.vae_scale_factor

    def latent_shape(
        self, height: int | None = None, width: int | None = None, batch_size: int = 1
    ) -> tuple[int, int, int, int]:
        """``(batch, channels, h, w)`` of the initial noise for an image of ``height`` x ``width`` pixels."""
        h = self._check_size("height", height)
        w = self._check_size("width", width)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        f = self.vae_scale_factor
        return batch_size, self.latent_channels, h // f, w // f

    def _check_size(self, name: str, value: int | None) -> int:
        if value is None:
            return self.default_size
        m = self.size_multiple
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % m:
            raise InputError(
                f"{name} must be a positive multiple of {m} pixels ({m}, {2 * m}, {3 * m}, ...; "
                f"default {self.default_size}) for {type(self.pipeline).__name__}, got {value!r}"
            )
        return value

    def describe(self) -> dict[str, Any]:
        return {
            "adapter": self.key,
            "pipeline": type(self.pipeline).__name__,
            "sdxl": self.is_sdxl,
            "default_size": self.default_size,
            "latent_shape": self.latent_shape(),
            "vae_scale_factor": self.vae_scale_factor,
            "text_encoders": [type(m).__name__ for m in self.text_encoders],
            "scheduler": type(self.scheduler).__name__,
        }
