"""Adapter for continuous-token AR generators (``mmeff.car.model.ContinuousARModel``; MAR / Harmon style).

The contract the decode loops (plain, DiSA, continuous speculative decoding) rely on, with
B prompts, c = ``token_dim`` and d the backbone width:

- condition: ``prefix(prompts, unconditional) -> (embeddings (B, L, d), mask (B, L))``; with guidance
  the loop stacks the conditional rows over the null-caption ones (``unconditional=True``), 2B rows;
- hidden state: ``embed_tokens(tokens (rows, n, c)) -> (rows, n, d)`` and ``backbone(inputs_embeds,
  attention_mask (4D), position_ids, cache) -> hidden (rows, n, d)``, a causal stack whose
  ``new_cache()`` supports cropping (speculative decoding rolls rejected drafts back);
- head sampling: ``head(x_t (N, c), t (N,), z (N, d)) -> predicted noise (N, c)``, and a diffusers
  ``scheduler`` whose ``alphas_cumprod`` and ``set_timesteps(steps)`` respacing the sampler walks
  (``car.sampler.sample_head``: DDPM ancestral steps, noise prediction only, "fixed small" variance,
  guidance on the noise prediction);
- ``decode_tokens(tokens (B, N, c)) -> images (B, 3, H, W)`` in [0, 1], and ``num_image_tokens``, ``grid``.

A model that fits (raster order, causal attention, a noise-predicting head) is wrapped by
one subclass providing these. MAR, and Harmon built on it, generate masked tokens in random
order with bidirectional attention and learn the head's variance: their decode order and
sampler would need their own loop, not only an adapter.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..car.model import ContinuousARModel
from ..registry import register_adapter
from .ar_base import run_decoder
from .base import Adapter


@register_adapter
class ContinuousARAdapter(Adapter):
    key = "continuous_ar"
    family: ClassVar[str] = "ar_continuous"
    description = "continuous-token AR: transformers decoder + per-token diffusion head + diffusers AutoencoderKL"
    default_guidance: ClassVar[float | None] = 3.0
    #: head denoising steps per token without DiSA: the testbed's 50 (MAR samples with 100, `--num_sampling_steps`)
    default_steps: ClassVar[int] = 50

    obj: ContinuousARModel

    @classmethod
    def matches(cls, obj: Any) -> bool:
        return isinstance(obj, ContinuousARModel)

    def hook_roots(self) -> list[nn.Module]:
        return [self.obj.backbone, self.obj.head]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.obj.config.grid)

    @property
    def num_image_tokens(self) -> int:
        return self.obj.config.num_image_tokens

    @property
    def token_dim(self) -> int:
        return self.obj.config.token_dim

    @property
    def device(self) -> torch.device:
        return self.obj.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.obj.backbone.parameters()).dtype

    @property
    def head(self) -> nn.Module:
        return self.obj.head

    @property
    def scheduler(self) -> Any:
        return self.obj.scheduler

    def has_unconditional(self) -> bool:
        return self.obj.config.null_caption

    def prefix(self, prompts: list[str], unconditional: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.obj.prompt_ids(list(prompts), unconditional)
        return self.obj.backbone.get_input_embeddings()(ids), mask

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.obj.head.embed_tokens(tokens.to(self.dtype))

    def backbone(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: Any) -> torch.Tensor:
        return run_decoder(self.obj.backbone, inputs_embeds, attention_mask, position_ids, cache)

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.obj.decode_tokens(tokens)

    def vae_fingerprint(self) -> str:
        return self.obj.vae_fingerprint()

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.key, "grid": self.grid, "token_dim": self.token_dim,
                "image_tokens": self.num_image_tokens}
