"""Diffusers FLUX.1 text-to-image pipeline (``FluxPipeline``: FLUX.1-schnell and FLUX.1-dev).

The noise a plugin optimises is the *packed* latents tensor ``(B, (h/2)(w/2), 4C)`` that
``__call__`` accepts as ``latents=`` (``prepare_latents`` neither scales nor repacks a given
tensor), with ``h, w`` the latent height and width. :meth:`FluxAdapter.initial_noise` draws it
the way ``prepare_latents`` does (unpacked ``randn_tensor``, then ``_pack_latents``), so an
un-optimised run reproduces the pipeline's own image for the same generator. The path mirrors
``FluxPipeline.__call__`` of diffusers 0.42.1 without true CFG, IP-adapter images and callbacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import InputError
from ..registry import register_adapter
from .diffusers_t2i import _from_diffusers
from .t2i_base import T2IAdapter, T2IRequest

#: ``FluxPipeline.check_inputs`` rejects longer T5 prompts
MAX_T5_SEQUENCE_LENGTH = 512


@register_adapter
class FluxAdapter(T2IAdapter):
    key = "flux"
    description = "diffusers FluxPipeline (FLUX.1-schnell, FLUX.1-dev)"
    path_keywords = ("sigmas", "prompt_2", "negative_prompt", "true_cfg_scale", "max_sequence_length",
                     "joint_attention_kwargs")

    @classmethod
    def matches(cls, obj: Any) -> bool:
        if not _from_diffusers(obj):
            return False
        from diffusers import FluxPipeline, FluxTransformer2DModel

        if not isinstance(obj, FluxPipeline):
            return False
        components = obj.components
        return (
            isinstance(components.get("transformer"), FluxTransformer2DModel)
            and isinstance(components.get("vae"), nn.Module)
            and isinstance(components.get("text_encoder"), nn.Module)
            and isinstance(components.get("text_encoder_2"), nn.Module)
        )

    # -- modules -------------------------------------------------------------------------
    @property
    def denoiser(self) -> nn.Module:
        return self.components["transformer"]

    @property
    def text_encoders(self) -> list[nn.Module]:
        """``[text_encoder (CLIP, pooled), text_encoder_2 (T5)]``."""
        return [self.components["text_encoder"], self.components["text_encoder_2"]]

    # -- facts ---------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        """Channels of the unpacked latents (the VAE's); packed tokens carry four times as many."""
        return int(self.denoiser.config.in_channels) // 4

    @property
    def size_multiple(self) -> int:
        """The VAE's downsampling times the 2x2 packing (``__call__`` otherwise silently resizes)."""
        return self.vae_scale_factor * 2

    @property
    def default_size(self) -> int:
        return int(getattr(self.pipeline, "default_sample_size", 128)) * self.vae_scale_factor

    @property
    def guidance_embeds(self) -> bool:
        """FLUX.1-dev: the guidance scale is an input of the transformer (schnell: ignored)."""
        return bool(self.denoiser.config.guidance_embeds)

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """Unpacked latent height and width, as ``prepare_latents`` computes them."""
        f = self.vae_scale_factor
        return 2 * (int(height) // (f * 2)), 2 * (int(width) // (f * 2))

    def packed_shape(self, height: int, width: int, batch_size: int = 1) -> tuple[int, int, int]:
        h, w = self.latent_hw(height, width)
        return batch_size, (h // 2) * (w // 2), self.latent_channels * 4

    def describe(self) -> dict[str, Any]:
        size = self.default_size
        return {
            "adapter": self.key,
            "pipeline": type(self.pipeline).__name__,
            "default_size": size,
            "noise_shape": self.packed_shape(size, size),
            "latent_channels": self.latent_channels,
            "vae_scale_factor": self.vae_scale_factor,
            "guidance_embeds": self.guidance_embeds,
            "max_sequence_length": self.call_default("max_sequence_length"),
            "text_encoders": [type(m).__name__ for m in self.text_encoders],
            "scheduler": type(self.scheduler).__name__,
        }

    # -- the call --------------------------------------------------------------------------
    def parse_call(self, args: tuple, kwargs: dict[str, Any]) -> T2IRequest:
        req = super().parse_call(args, kwargs)
        extra = req.extra
        true_cfg = extra.get("true_cfg_scale", 1.0)
        negative = extra.get("negative_prompt") is not None or kwargs.get("negative_prompt_embeds") is not None
        if true_cfg > 1 and negative:
            raise InputError(
                f"true CFG (true_cfg_scale={true_cfg} with a negative prompt) is not supported on the differentiable "
                "Flux path; use true_cfg_scale=1 or drop the negative prompt (guidance_scale is the distilled guidance)"
            )
        length = extra.get("max_sequence_length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                                   or not 1 <= length <= MAX_T5_SEQUENCE_LENGTH):
            raise InputError(f"max_sequence_length must be an int in 1..{MAX_T5_SEQUENCE_LENGTH}, got {length!r}")
        prompt_2 = extra.get("prompt_2")
        if isinstance(prompt_2, (list, tuple)) and len(prompt_2) != req.batch_size:
            raise InputError(f"got {len(prompt_2)} prompt_2 entries for {req.batch_size} prompts; pass one per prompt")
        return req

    # -- the differentiable path -----------------------------------------------------------
    def noise_shape(self, req: T2IRequest) -> tuple[int, ...]:
        return self.packed_shape(req.height, req.width, req.batch_size)

    def noise_dtype(self) -> torch.dtype:
        return self.components["text_encoder_2"].dtype  # __call__ draws the noise in prompt_embeds.dtype

    def initial_noise(self, req: T2IRequest) -> torch.Tensor:
        """``prepare_latents``' draw: unpacked ``randn_tensor`` with the request's generator, then packed."""
        if req.latents is not None:
            return super().initial_noise(req)
        from diffusers.utils.torch_utils import randn_tensor

        h, w = self.latent_hw(req.height, req.width)
        shape = (req.batch_size, self.latent_channels, h, w)
        noise = randn_tensor(shape, generator=req.generator, device=self.device, dtype=self.noise_dtype())
        return self.pipeline._pack_latents(noise, req.batch_size, self.latent_channels, h, w)

    @torch.no_grad()
    def encode(self, req: T2IRequest) -> dict[str, Any]:
        attention_kwargs = req.extra.get("joint_attention_kwargs") or {}
        embeds, pooled, text_ids = self.pipeline.encode_prompt(
            prompt=req.prompts, prompt_2=req.extra.get("prompt_2"), device=self.device, num_images_per_prompt=1,
            max_sequence_length=self._option(req, "max_sequence_length"), lora_scale=attention_kwargs.get("scale"))
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}

    def render(self, noise: torch.Tensor, embeds: dict[str, Any], req: T2IRequest, generator: Any,
               decode_chunk: int | None = None) -> torch.Tensor:
        """``__call__``'s flow-matching loop and decode, with gradients (``generator`` is unused, as in
        ``__call__``: the Euler steps draw no noise unless the scheduler samples stochastically)."""
        import contextlib

        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        pipe, transformer, scheduler, device = self.pipeline, self.denoiser, self.scheduler, self.device
        prompt_embeds = embeds["encoder_hidden_states"]
        latents = noise.to(device=device, dtype=prompt_embeds.dtype)  # prepare_latents with latents given
        h, w = self.latent_hw(req.height, req.width)
        image_ids = pipe._prepare_latent_image_ids(req.batch_size, h // 2, w // 2, device, prompt_embeds.dtype)
        steps = req.num_inference_steps
        sigmas = req.extra.get("sigmas")
        sigmas = np.linspace(1.0, 1 / steps, steps) if sigmas is None else sigmas
        if getattr(scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        config = scheduler.config
        mu = calculate_shift(latents.shape[1], config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full([1], req.guidance_scale, device=device, dtype=torch.float32).expand(latents.shape[0])
        attention_kwargs = dict(req.extra.get("joint_attention_kwargs") or {})
        scheduler.set_begin_index(0)
        cache = getattr(transformer, "cache_context", None)
        for t in timesteps:
            timestep = t.expand(latents.shape[0]).to(latents.dtype)
            with cache("cond") if cache is not None else contextlib.nullcontext():
                pred = transformer(hidden_states=latents, timestep=timestep / 1000, guidance=guidance,
                                   pooled_projections=embeds["pooled_projections"], encoder_hidden_states=prompt_embeds,
                                   txt_ids=embeds["txt_ids"], img_ids=image_ids,
                                   joint_attention_kwargs=attention_kwargs, return_dict=False)[0]
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        image = self.decode_chunked(latents, lambda part: self._decode(part, req), decode_chunk)
        return (image * 0.5 + 0.5).clamp(0, 1)  # image_processor.postprocess(output_type="pt")

    def _decode(self, latents: torch.Tensor, req: T2IRequest) -> torch.Tensor:
        """Packed latents -> pixels in [-1, 1]: unpack, undo the VAE's scaling and shift, decode."""
        from diffusers.utils.torch_utils import get_module_execution_device

        latents = self.pipeline._unpack_latents(latents, req.height, req.width, self.vae_scale_factor)
        config = self.vae.config
        latents = latents / config.scaling_factor + config.shift_factor
        latents = latents.to(get_module_execution_device(self.vae))
        return self.vae.decode(latents, return_dict=False)[0]
