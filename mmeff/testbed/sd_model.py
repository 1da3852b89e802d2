"""The shapes text-to-image model: a real diffusers ``StableDiffusionPipeline``, small enough to train on a CPU.

32 px images, a KL autoencoder to 8 x 8 x 4 latents, a v-prediction UNet with cross-attention
at both resolutions (v-prediction keeps the one-step estimate at t = 999 well scaled; the
eps estimate would be amplified 15x there), a 3-layer CLIP text encoder over the testbed's
word list, and a trailing-spacing DDIM scheduler so that 1-4 steps start from pure noise,
as SD-Turbo's scheduler does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..testing.diffusion import clip_tokenizer
from .t2i_prompts import T2I_IMAGE_SIZE, T2I_WORDS

BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
         "steps_offset": 1}


@dataclass(frozen=True)
class ShapesSDSpec:
    image_size: int = T2I_IMAGE_SIZE
    max_prompt_tokens: int = 16
    text_width: int = 64
    text_layers: int = 3
    vae_channels: tuple[int, ...] = (32, 64, 64)  # factor 4: 32 px -> 8 x 8
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128)
    prediction_type: str = "v_prediction"


def build_tokenizer(spec: ShapesSDSpec) -> CLIPTokenizer:
    return clip_tokenizer(T2I_WORDS, model_max_length=spec.max_prompt_tokens)


def build_text_encoder(spec: ShapesSDSpec, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=spec.text_width, intermediate_size=2 * spec.text_width,
        num_hidden_layers=spec.text_layers, num_attention_heads=4, max_position_embeddings=spec.max_prompt_tokens,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def build_vae(spec: ShapesSDSpec) -> AutoencoderKL:
    n = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=spec.vae_channels, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        latent_channels=spec.latent_channels, norm_num_groups=16, sample_size=spec.image_size,
    )


def build_unet(spec: ShapesSDSpec) -> UNet2DConditionModel:
    n = len(spec.unet_channels)
    return UNet2DConditionModel(
        sample_size=spec.image_size // 2 ** (len(spec.vae_channels) - 1),
        in_channels=spec.latent_channels, out_channels=spec.latent_channels,
        block_out_channels=spec.unet_channels, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=spec.text_width, attention_head_dim=8, norm_num_groups=16,
    )


def training_scheduler(spec: ShapesSDSpec) -> DDPMScheduler:
    return DDPMScheduler(**BETAS, prediction_type=spec.prediction_type, clip_sample=False)


def sampling_scheduler(spec: ShapesSDSpec) -> DDIMScheduler:
    """Trailing spacing: one step starts at t = 999 (pure noise), like SD-Turbo's scheduler config."""
    return DDIMScheduler(**BETAS, prediction_type=spec.prediction_type, clip_sample=False, set_alpha_to_one=False,
                         timestep_spacing="trailing")


def assemble(spec: ShapesSDSpec, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, vae: AutoencoderKL,
             unet: UNet2DConditionModel) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=sampling_scheduler(spec), safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images_to_tensor(images: list) -> torch.Tensor:
    """HxWx3 uint8 arrays -> (B, 3, H, W) in [-1, 1], the VAE's input range."""
    import numpy as np

    batch = np.stack(images).astype("float32") / 127.5 - 1.0
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
