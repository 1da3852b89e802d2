"""The per-token diffusion head of a continuous-token AR model (MAR's ``DiffLoss`` MLP, as a diffusers model).

A small MLP denoiser: the noisy token ``x_t``, the timestep and the backbone's hidden state
``z`` for that position go in, the noise prediction comes out; ``z`` and the timestep modulate
every residual block (adaLN, as MAR's ``SimpleMLPAdaLN``). It also owns ``token_in``, the
linear map from a clean token to the backbone's input embedding. Being a diffusers
``ModelMixin`` + ``ConfigMixin``, it saves and loads with ``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin


class _AdaLNBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class DiffusionHead(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, token_dim: int = 4, cond_dim: int = 128, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.token_in = nn.Linear(token_dim, cond_dim)
        self.x_in = nn.Linear(token_dim, width)
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width, width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(_AdaLNBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out = nn.Linear(width, token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Clean tokens ``(..., token_dim)`` -> backbone input embeddings ``(..., cond_dim)``."""
        return self.token_in(tokens)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``(N, token_dim)`` noisy tokens, ``(N,)`` timesteps, ``(N, cond_dim)`` hidden states -> noise prediction."""
        c = self.time_embed(self.time_proj(t.reshape(-1)).to(x_t.dtype)) + self.cond_embed(z)
        h = self.x_in(x_t)
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.out_norm(h))
