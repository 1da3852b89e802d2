"""What ToMe-SD and ToDo share around a diffusers denoiser: its blocks, its input grid and timestep,
and ToMe's per-cell destination draws."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from mmeff.errors import UnsupportedModelError
from mmeff.hooks import ModelHook
from mmeff.plugin import PluginContext

from .ops import destination_mask

BLOCK_CLASS = "BasicTransformerBlock"


def transformer_blocks(denoiser: nn.Module) -> list[nn.Module]:
    """Every BasicTransformerBlock of a UNet or DiT (by class name, as tomesd finds them; subclasses count)."""
    return [m for m in denoiser.modules() if any(c.__name__ == BLOCK_CLASS for c in type(m).__mro__)]


def require_blocks(ctx: PluginContext, plugin: str) -> list[nn.Module]:
    blocks = transformer_blocks(ctx.adapter.denoiser)
    if not blocks:
        raise UnsupportedModelError(f"{plugin} found no {BLOCK_CLASS} in {type(ctx.adapter.denoiser).__name__}")
    return blocks


class DenoiserInput(ModelHook):
    """Before each denoiser call: the input grid in top-level tokens (a DiT's divided by its patch size) and
    the timestep, handed to ``on_call(grid, timestep)``."""

    def __init__(self, denoiser: nn.Module, on_call: Callable[[tuple[int, int], float | None], None]) -> None:
        self.patch = getattr(denoiser.config, "patch_size", None) or 1
        self.on_call = on_call

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        grid = (sample.shape[-2] // self.patch, sample.shape[-1] // self.patch)
        self.on_call(grid, None if timestep is None else float(torch.as_tensor(timestep).flatten()[0]))
        return args, kwargs


class CellDestinations:
    """tomesd's destination choice: the top-left token of each ``sy x sx`` cell, or with ``use_rand`` a random
    one per cell from a generator forked from torch's global RNG on first use (``seed``: re-seeded every call).
    Odd batches cannot pair cond/uncond rows, so tomesd turns the randomness off for them."""

    def __init__(self, sx: int, sy: int, use_rand: bool, seed: int | None) -> None:
        self.sx, self.sy, self.use_rand, self.seed = sx, sy, use_rand, seed
        self.generator: torch.Generator | None = None

    def reset(self) -> None:
        if self.seed is not None:
            self.generator = torch.Generator().manual_seed(self.seed)

    def mask(self, h: int, w: int, batch: int) -> torch.Tensor:
        offsets = None
        if self.use_rand and batch % 2 == 0:
            if self.generator is None:
                self.generator = torch.Generator().set_state(torch.get_rng_state())
            offsets = torch.randint(self.sy * self.sx, size=(h // self.sy, w // self.sx, 1),
                                    generator=self.generator)[..., 0]
        return destination_mask(h, w, self.sx, self.sy, offsets)



