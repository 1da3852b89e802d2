"""Diffusers PixArt-alpha and PixArt-sigma text-to-image pipelines (T5 text encoder, DiT denoiser).

The differentiable path mirrors ``PixArtAlphaPipeline.__call__`` / ``PixArtSigmaPipeline.__call__``
in diffusers 0.42.1 step for step. The two share one call structure; they differ only where
noted on :class:`PixArtAdapter` (the ``sigma`` flag). ReNO's PixArt setting is the DMD one-step
transformer with ``DDPMScheduler`` and ``timesteps=[400]``: with one step alpha returns the
scheduler's ``pred_original_sample``, exactly as ``__call__`` does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import InputError
from ..registry import register_adapter
from .diffusers_t2i import _from_diffusers
from .t2i_base import T2IAdapter, T2IRequest


@register_adapter
class PixArtAdapter(T2IAdapter):
    key = "pixart"
    description = "diffusers PixArtAlphaPipeline / PixArtSigmaPipeline (PixArt-alpha, PixArt-sigma, PixArt-DMD)"
    path_keywords = ("timesteps", "sigmas", "negative_prompt", "eta", "max_sequence_length", "clean_caption",
                     "use_resolution_binning")

    @classmethod
    def matches(cls, obj: Any) -> bool:
        if not _from_diffusers(obj):
            return False
        from diffusers import PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel

        if not isinstance(obj, (PixArtAlphaPipeline, PixArtSigmaPipeline)):
            return False
        components = obj.components
        return (
            isinstance(components.get("transformer"), PixArtTransformer2DModel)
            and isinstance(components.get("vae"), nn.Module)
            and isinstance(components.get("text_encoder"), nn.Module)
        )

    # -- modules -------------------------------------------------------------------------
    @property
    def denoiser(self) -> nn.Module:
        return self.components["transformer"]

    @property
    def text_encoder(self) -> nn.Module:
        return self.components["text_encoder"]

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder]

    # -- facts ---------------------------------------------------------------------------
    @property
    def is_sigma(self) -> bool:
        """PixArt-sigma: no micro-conditions, no one-step ``pred_original_sample``, decode in the VAE's dtype."""
        from diffusers import PixArtSigmaPipeline

        return isinstance(self.pipeline, PixArtSigmaPipeline)

    def describe(self) -> dict[str, Any]:
        f, size = self.vae_scale_factor, self.default_size
        return {
            "adapter": self.key,
            "pipeline": type(self.pipeline).__name__,
            "sigma": self.is_sigma,
            "default_size": size,
            "latent_shape": (1, self.latent_channels, size // f, size // f),
            "vae_scale_factor": f,
            "learned_sigma": self._learned_sigma,
            "max_sequence_length": self.call_default("max_sequence_length"),
            "text_encoders": [type(self.text_encoder).__name__],
            "scheduler": type(self.scheduler).__name__,
        }

    @property
    def _learned_sigma(self) -> bool:
        return self.denoiser.config.out_channels // 2 == self.latent_channels

    # -- the call --------------------------------------------------------------------------
    def parse_call(self, args: tuple, kwargs: dict[str, Any]) -> T2IRequest:
        req = super().parse_call(args, kwargs)
        length = req.extra.get("max_sequence_length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise InputError(f"max_sequence_length must be a positive int, got {length!r}")
        self.generation_hw(req)  # an unbinnable sample size fails here, as in __call__
        return req

    def _bins(self) -> dict[str, list[float]]:
        from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as alpha

        tables = {128: alpha.ASPECT_RATIO_1024_BIN, 64: alpha.ASPECT_RATIO_512_BIN, 32: alpha.ASPECT_RATIO_256_BIN}
        if self.is_sigma:
            from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

            tables[256] = ASPECT_RATIO_2048_BIN
        sample_size = int(self.denoiser.config.sample_size)
        if sample_size not in tables:
            raise InputError(
                f"use_resolution_binning needs a transformer sample_size in {sorted(tables)}, this one has "
                f"{sample_size}; pass use_resolution_binning=False"
            )
        return tables[sample_size]

    def generation_hw(self, req: T2IRequest) -> tuple[int, int]:
        """The size the latents are made at: the aspect-ratio bin when ``use_resolution_binning`` (the default)."""
        if not self._option(req, "use_resolution_binning"):
            return req.height, req.width
        return self.pipeline.image_processor.classify_height_width_bin(req.height, req.width, ratios=self._bins())

    # -- the differentiable path -----------------------------------------------------------
    def noise_shape(self, req: T2IRequest) -> tuple[int, ...]:
        height, width = self.generation_hw(req)
        f = self.vae_scale_factor
        return req.batch_size, self.latent_channels, int(height) // f, int(width) // f

    def noise_dtype(self) -> torch.dtype:
        return self.text_encoder.dtype  # __call__ draws the noise in prompt_embeds.dtype

    def _cfg(self, req: T2IRequest) -> bool:
        return req.guidance_scale > 1.0

    @torch.no_grad()
    def encode(self, req: T2IRequest) -> dict[str, Any]:
        from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device

        pipe, cfg, device = self.pipeline, self._cfg(req), self.device
        embeds, mask, negative_embeds, negative_mask = pipe.encode_prompt(
            req.prompts, cfg, negative_prompt=self._option(req, "negative_prompt"), num_images_per_prompt=1,
            device=device, clean_caption=self._option(req, "clean_caption"),
            max_sequence_length=self._option(req, "max_sequence_length"))
        if cfg:
            embeds, mask = torch.cat([negative_embeds, embeds]), torch.cat([negative_mask, mask])
        if not self.is_sigma:
            mask = mask.to(maybe_adjust_dtype_for_device(mask.dtype, mask.device))
        added = {"resolution": None, "aspect_ratio": None}
        if not self.is_sigma and self.denoiser.config.sample_size == 128:  # alpha's 1024 px micro-conditions
            height, width = self.generation_hw(req)
            resolution = torch.tensor([height, width]).repeat(req.batch_size, 1)
            aspect_ratio = torch.tensor([float(height / width)]).repeat(req.batch_size, 1)
            resolution = resolution.to(dtype=embeds.dtype, device=device)
            aspect_ratio = aspect_ratio.to(dtype=embeds.dtype, device=device)
            if cfg:
                resolution, aspect_ratio = torch.cat([resolution, resolution]), torch.cat([aspect_ratio, aspect_ratio])
            added = {"resolution": resolution, "aspect_ratio": aspect_ratio}
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask, "added_cond_kwargs": added}

    def render(self, noise: torch.Tensor, embeds: dict[str, Any], req: T2IRequest, generator: Any,
               decode_chunk: int | None = None) -> torch.Tensor:
        """``__call__``'s denoising loop and decode, with gradients (no legacy ``callback``)."""
        from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import retrieve_timesteps

        pipe, transformer, scheduler, cfg = self.pipeline, self.denoiser, self.scheduler, self._cfg(req)
        device = self.device
        timestep_device = "cpu" if device.type == "neuron" else device
        timesteps, num_steps = retrieve_timesteps(scheduler, req.num_inference_steps, timestep_device,
                                                  req.extra.get("timesteps"), req.extra.get("sigmas"))
        latents = noise.to(device) * scheduler.init_noise_sigma  # what prepare_latents does to given latents
        step_kwargs = pipe.prepare_extra_step_kwargs(generator, req.extra.get("eta", 0.0))
        if hasattr(scheduler, "set_begin_index") and not self.is_sigma:
            scheduler.set_begin_index(0)
        # alpha returns pred_original_sample after a single step (one-step DMD); sigma always the step's sample
        output_index = 1 if num_steps == 1 and not self.is_sigma else 0
        for t in timesteps:
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            current = self._timestep(t, model_input).expand(model_input.shape[0])
            pred = transformer(model_input, encoder_hidden_states=embeds["encoder_hidden_states"],
                               encoder_attention_mask=embeds["encoder_attention_mask"], timestep=current,
                               added_cond_kwargs=embeds["added_cond_kwargs"], return_dict=False)[0]
            if cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + req.guidance_scale * (cond - uncond)
            if self._learned_sigma:
                pred = pred.chunk(2, dim=1)[0]
            out = scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)
            if len(out) <= output_index:
                raise InputError(
                    f"one-step PixArt-alpha takes the scheduler's pred_original_sample, which "
                    f"{type(scheduler).__name__}.step does not return; use e.g. DDPMScheduler or DDIMScheduler"
                )
            latents = out[output_index]
        image = self.decode_chunked(latents, self._decode, decode_chunk)
        if self._option(req, "use_resolution_binning"):
            image = pipe.image_processor.resize_and_crop_tensor(image, req.width, req.height)
        return (image * 0.5 + 0.5).clamp(0, 1)  # image_processor.postprocess(output_type="pt")

    def _timestep(self, t: Any, model_input: torch.Tensor) -> torch.Tensor:
        """``current_timestep`` as ``__call__`` builds it, before broadcasting to the batch."""
        from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device

        if torch.is_tensor(t):
            return t[None].to(model_input.device) if t.dim() == 0 else t
        device = model_input.device
        if self.is_sigma:
            low = device.type in ("mps", "npu")
            dtype = (torch.float32 if low else torch.float64) if isinstance(t, float) else (
                torch.int32 if low else torch.int64)
        else:
            dtype = maybe_adjust_dtype_for_device(torch.float64 if isinstance(t, float) else torch.int64, device)
        return torch.tensor([t], dtype=dtype, device=device)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.is_sigma:
            latents = latents.to(self.vae.dtype)
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
