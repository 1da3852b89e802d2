"""Diffusers Stable Diffusion text-to-image pipelines: SD 1.x/2.x, SD-Turbo, SDXL and SDXL-Turbo.

Modules are looked up in the pipeline's ``components`` dict rather than through attribute
chains, so a scheduler or VAE swapped in by the user after wrapping is what plugins see.
diffusers is imported only when the object already comes from it: wrapping a VLM never
pays diffusers' import time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import InputError
from ..registry import register_adapter
from .t2i_base import T2IAdapter, T2IRequest

TEXT_ENCODER_KEYS = ("text_encoder", "text_encoder_2")
TOKENIZER_KEYS = ("tokenizer", "tokenizer_2")


def _from_diffusers(obj: Any) -> bool:
    return any(c.__module__.split(".")[0] == "diffusers" for c in type(obj).__mro__)


@register_adapter
class DiffusersT2IAdapter(T2IAdapter):
    key = "diffusers_t2i"
    description = "diffusers StableDiffusionPipeline / StableDiffusionXLPipeline (SD 1.x, 2.x, SD-Turbo, SDXL)"

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

    # -- facts ---------------------------------------------------------------------------
    @property
    def is_sdxl(self) -> bool:
        """SDXL needs pooled text embeddings and size/crop ids, so plugins calling it pass more arguments."""
        from diffusers import StableDiffusionXLPipeline

        return isinstance(self.pipeline, StableDiffusionXLPipeline)

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
        return self.default_size if value is None else self.check_side(name, value)

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

    # -- differentiable path (ReNO and other noise-optimising plugins) -----------------------
    def noise_shape(self, req: T2IRequest) -> tuple[int, ...]:
        return self.latent_shape(req.height, req.width, req.batch_size)

    def noise_dtype(self) -> torch.dtype:
        return self.text_encoders[-1].dtype  # __call__ draws the noise in prompt_embeds.dtype

    def _cfg(self, req: T2IRequest) -> bool:
        return req.guidance_scale > 1 and self.denoiser.config.time_cond_proj_dim is None

    @torch.no_grad()
    def encode(self, req: T2IRequest) -> dict[str, Any]:
        pipe, cfg = self.pipeline, self._cfg(req)
        negative = req.extra.get("negative_prompt")
        if not self.is_sdxl:
            embeds, negative_embeds = pipe.encode_prompt(req.prompts, self.device, 1, cfg, negative)
            if cfg:
                embeds = torch.cat([negative_embeds, embeds])
            return {"encoder_hidden_states": embeds, "added_cond_kwargs": None}
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt=req.prompts, prompt_2=req.extra.get("prompt_2"), device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg, negative_prompt=negative,
            negative_prompt_2=req.extra.get("negative_prompt_2"))
        text_2 = self.components.get("text_encoder_2")
        projection_dim = int(pooled.shape[-1]) if text_2 is None else text_2.config.projection_dim
        size = (req.height, req.width)
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=embeds.dtype,
                                          text_encoder_projection_dim=projection_dim)
        if cfg:
            embeds, pooled = torch.cat([negative_embeds, embeds]), torch.cat([negative_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        time_ids = time_ids.to(self.device).repeat(req.batch_size, 1)
        return {"encoder_hidden_states": embeds, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    def render(self, noise: torch.Tensor, embeds: dict[str, Any], req: T2IRequest, generator: Any,
               decode_chunk: int | None = None) -> torch.Tensor:
        """``__call__``'s denoising loop and decode, with gradients (no callbacks, IP-adapter or rescale)."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

        pipe, unet, scheduler, cfg = self.pipeline, self.denoiser, self.scheduler, self._cfg(req)
        timesteps, _ = retrieve_timesteps(scheduler, req.num_inference_steps, self.device,
                                          req.extra.get("timesteps"), req.extra.get("sigmas"))
        if hasattr(scheduler, "set_begin_index") and self.is_sdxl:
            scheduler.set_begin_index(0)
        latents = noise * scheduler.init_noise_sigma  # what prepare_latents does to given latents
        step_kwargs = pipe.prepare_extra_step_kwargs(generator, req.extra.get("eta", 0.0))
        timestep_cond = None
        if unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(req.guidance_scale - 1).repeat(req.batch_size)
            timestep_cond = pipe.get_guidance_scale_embedding(
                scale, embedding_dim=unet.config.time_cond_proj_dim).to(device=self.device, dtype=latents.dtype)
        for t in timesteps:
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            pred = unet(model_input, t, encoder_hidden_states=embeds["encoder_hidden_states"],
                        timestep_cond=timestep_cond, added_cond_kwargs=embeds["added_cond_kwargs"],
                        return_dict=False)[0]
            if cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + req.guidance_scale * (cond - uncond)
            latents = scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
        image = self.decode_chunked(latents, self._decode, decode_chunk)
        return (image / 2 + 0.5).clamp(0, 1)

    @property
    def path_keywords(self) -> tuple[str, ...]:  # type: ignore[override]
        sdxl = ("prompt_2", "negative_prompt_2") if self.is_sdxl else ()
        return ("timesteps", "sigmas", "negative_prompt", "eta", *sdxl)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        if self.is_sdxl and vae.dtype == torch.float16 and vae.config.force_upcast:
            # SDXL's __call__ decodes in fp32 here (its fp16 VAE overflows); so must the path
            vae.to(torch.float32)
            try:
                return self._decode_in(latents.float())
            finally:
                vae.to(torch.float16)
        return self._decode_in(latents)

    def _decode_in(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        latents = latents.to(self.vae.dtype)
        if self.is_sdxl and mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            mean_t = torch.tensor(mean).view(shape).to(latents)
            std_t = torch.tensor(std).view(shape).to(latents)
            latents = latents * std_t / config.scaling_factor + mean_t
        else:
            latents = latents / config.scaling_factor
        return self.vae.decode(latents, return_dict=False)[0]
