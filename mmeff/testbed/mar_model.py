"""The shapes continuous-token AR pair: a MAR-style target and a smaller draft over the shapes-sd autoencoder's latents.

Both read and write the same tokens (the bundled ``shapes-sd/vae`` maps 32 px to 8 x 8 x 4
latents; each latent pixel times the VAE's ``scaling_factor`` is one token), which is what
continuous speculative decoding needs of a draft. Each model is a ``LlamaModel`` over the
testbed's word tokenizer plus ``<boi>`` (the discrete testbed's tokenizer), a per-token
``DiffusionHead`` conditioned on its hidden state, and a ``DDPMScheduler`` with the cosine
("squaredcos_cap_v2") schedule, assembled into a ``ContinuousARModel`` whose config points
at the shared VAE by a relative path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from diffusers import AutoencoderKL, DDPMScheduler
from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

from ..car.head import DiffusionHead
from ..car.model import ContinuousARConfig, ContinuousARModel
from .ar_model import boi_token_id, build_tokenizer
from .t2i_prompts import T2I_IMAGE_SIZE

__all__ = ["ShapesMARSpec", "assemble", "build_backbone", "build_head", "build_scheduler", "build_tokenizer",
           "check_vae", "model_config"]

Which = Literal["target", "draft"]


@dataclass(frozen=True)
class ShapesMARSpec:
    image_size: int = T2I_IMAGE_SIZE
    grid: tuple[int, int] = (8, 8)  # the shared VAE's latent grid at image_size
    token_dim: int = 4  # the VAE's latent channels
    max_positions: int = 128  # longest caption (8 tokens) + bos + <boi> + 64 tokens = 74, with a margin
    target_hidden: int = 128
    target_layers: int = 4
    target_heads: int = 4
    target_kv_heads: int = 4
    target_intermediate: int = 512
    target_head_width: int = 128
    target_head_depth: int = 3
    draft_hidden: int = 64
    draft_layers: int = 2
    draft_heads: int = 4
    draft_kv_heads: int = 2
    draft_intermediate: int = 256
    draft_head_width: int = 64
    draft_head_depth: int = 2
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"

    def size(self, which: Which, name: str) -> int:
        """``size("draft", "hidden")`` -> ``draft_hidden``; one spelling for both models."""
        if which not in ("target", "draft"):
            raise ValueError(f"which must be 'target' or 'draft', got {which!r}")
        return getattr(self, f"{which}_{name}")


def build_backbone(spec: ShapesMARSpec, which: Which, tokenizer: PreTrainedTokenizerFast | None = None) -> LlamaModel:
    """A ``LlamaModel`` over the word vocabulary (+ ``<boi>``); image tokens enter as embeddings, never as ids."""
    tokenizer = tokenizer or build_tokenizer()
    return LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.size(which, "hidden"),
        intermediate_size=spec.size(which, "intermediate"), num_hidden_layers=spec.size(which, "layers"),
        num_attention_heads=spec.size(which, "heads"), num_key_value_heads=spec.size(which, "kv_heads"),
        max_position_embeddings=spec.max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def build_head(spec: ShapesMARSpec, which: Which) -> DiffusionHead:
    return DiffusionHead(token_dim=spec.token_dim, cond_dim=spec.size(which, "hidden"),
                         width=spec.size(which, "head_width"), depth=spec.size(which, "head_depth"))


#: How the head's timesteps are respaced. MAR's own spacing (guided diffusion's ``space_timesteps``,
#: diffusers' "linspace") starts at t = 999, but this cosine schedule's alpha_bar there is 2.4e-9: the first
#: step's x0 estimate amplifies the noise prediction's error 20,000-fold, the draft's and target's
#: trajectories part at once, and continuous_spec accepted no draft at all (measured 2026-12-03). "leading"
#: starts at t = 980 at 50 steps (alpha_bar 9e-4) and at t = 800 at 5.
SHAPES_MAR_SPACING = "leading"


def build_scheduler(spec: ShapesMARSpec) -> DDPMScheduler:
    """The training noise schedule; sampling respaces the same ``alphas_cumprod`` (``car.sampler``)."""
    return DDPMScheduler(num_train_timesteps=spec.train_timesteps, beta_schedule=spec.beta_schedule,
                         prediction_type="epsilon", timestep_spacing=SHAPES_MAR_SPACING)


def check_vae(spec: ShapesMARSpec, vae: AutoencoderKL) -> None:
    """The VAE must give ``spec.grid`` x ``spec.token_dim`` latents for ``spec.image_size`` images."""
    side = spec.image_size // 2 ** (len(vae.config.block_out_channels) - 1)
    if vae.config.latent_channels != spec.token_dim or (side, side) != tuple(spec.grid):
        raise ValueError(f"the VAE gives {side} x {side} x {vae.config.latent_channels} latents at "
                         f"{spec.image_size} px; the spec wants {spec.grid} x {spec.token_dim}")


def model_config(spec: ShapesMARSpec, tokenizer: PreTrainedTokenizerFast, vae: str = "../shapes-sd/vae",
                 null_caption: bool = True) -> ContinuousARConfig:
    """``vae``: the autoencoder's folder, relative to the model's; ``null_caption``: trained with caption dropout."""
    return ContinuousARConfig(grid=tuple(spec.grid), token_dim=spec.token_dim, boi_token_id=boi_token_id(tokenizer),
                              image_size=spec.image_size, vae=vae, null_caption=null_caption)


def assemble(spec: ShapesMARSpec, tokenizer: PreTrainedTokenizerFast, backbone: LlamaModel, head: DiffusionHead,
             vae: AutoencoderKL, scheduler: DDPMScheduler | None = None, vae_dir: str = "../shapes-sd/vae",
             null_caption: bool = True) -> ContinuousARModel:
    return ContinuousARModel(backbone, head, vae, scheduler or build_scheduler(spec), tokenizer,
                             model_config(spec, tokenizer, vae_dir, null_caption))
