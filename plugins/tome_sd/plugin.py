"""ToMe for Stable Diffusion (Bolya & Hoffman, CVPRW 2023) by hooks on diffusers' transformer blocks.

The released ``tomesd`` swaps each ``BasicTransformerBlock``'s class for a copy of an older
diffusers forward. mmeff hooks the blocks instead: the denoiser's input gives the token grid, each
block's input picks the merge (2-D bipartite matching on the block's input tokens), and the
block's ``attn1`` (and optionally ``attn2`` and ``ff``) run on the merged tokens, their outputs
unmerged before the residual add, exactly where ``tomesd`` puts ``m_a``/``u_a``. Because only
module boundaries are touched, any block forward diffusers ships (SD 1.x/2.x, SDXL, PixArt's
adaLN-single blocks) keeps working, and detaching restores the original forwards.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from mmeff.hooks import ModelHook
from mmeff.plugin import Plugin, PluginContext
from mmeff.registry import register_plugin

from .config import ToMeSDConfig
from .grid import CellDestinations, DenoiserInput, require_blocks
from .ops import GridMerge, grid_merge


@register_plugin
class ToMeSDPlugin(Plugin):
    name = "tome_sd"
    config_cls = ToMeSDConfig
    supports = ("diffusers_t2i", "pixart")
    refused = {"flux": "Flux's double-stream blocks attend over text and image tokens jointly and its single-stream "
                       "blocks fuse attention and MLP; neither has the BasicTransformerBlock boundaries ToMe-SD "
                       "merges at; not built yet"}
    description = "ToMe-SD: merge similar image tokens before self-attention in diffusion transformer blocks"
    config: ToMeSDConfig

    def __init__(self, config: ToMeSDConfig) -> None:
        super().__init__(config)
        self.grid: tuple[int, int] | None = None
        self.current: GridMerge | None = None
        self.cells = CellDestinations(config.sx, config.sy, config.use_rand, config.seed)
        self.tokens_before: list[int] = []
        self.tokens_after: list[int] = []
        self.denoiser_calls = 0
        self.block_merges = 0

    def check(self, ctx: PluginContext) -> None:
        require_blocks(ctx, self.name)

    def attach(self, ctx: PluginContext) -> None:
        c = self.config
        ctx.add_hook(ctx.adapter.denoiser, "grid", DenoiserInput(ctx.adapter.denoiser, self._denoiser_call))
        for i, block in enumerate(require_blocks(ctx, self.name)):
            ctx.add_hook(block, f"block{i}", _ChooseMerge(self))
            for part, on in (("attn1", c.merge_attn), ("attn2", c.merge_crossattn), ("ff", c.merge_mlp)):
                if on and isinstance(getattr(block, part, None), nn.Module):
                    ctx.add_hook(getattr(block, part), f"block{i}.{part}", _MergeAround(self))

    def reset(self) -> None:
        self.tokens_before, self.tokens_after, self.denoiser_calls, self.block_merges = [], [], 0, 0
        self.cells.reset()

    def _denoiser_call(self, grid: tuple[int, int], timestep: float | None) -> None:
        self.grid, self.tokens_before, self.tokens_after = grid, [], []
        self.denoiser_calls += 1

    def stats(self) -> dict[str, Any]:
        """Per block of the last denoiser call: image tokens in, and after the merge; over the whole call:
        denoiser calls and merged block calls (a ReNO search's renders included)."""
        return {"tokens_before": list(self.tokens_before), "tokens_after": list(self.tokens_after),
                "merged_blocks": sum(a < b for a, b in zip(self.tokens_after, self.tokens_before)),
                "denoiser_calls": self.denoiser_calls, "block_merges": self.block_merges}

    # -- the merge of one block call -------------------------------------------------------
    def choose(self, x: torch.Tensor) -> GridMerge | None:
        """tomesd's ``compute_merge``: level from the token count, destinations, then the matching."""
        c = self.config
        if self.grid is None or x.ndim != 3:
            return None
        height, width = self.grid
        downsample = math.ceil(math.sqrt(height * width // x.shape[1]))
        r = int(x.shape[1] * c.ratio)
        if downsample > c.max_downsample or r <= 0:
            return None
        h, w = math.ceil(height / downsample), math.ceil(width / downsample)
        return grid_merge(x, self.cells.mask(h, w, x.shape[0]), r)


class _ChooseMerge(ModelHook):
    def __init__(self, plugin: ToMeSDPlugin) -> None:
        self.plugin = plugin

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x = args[0] if args else kwargs["hidden_states"]
        merge = self.plugin.current = self.plugin.choose(x)
        self.plugin.block_merges += merge is not None
        self.plugin.tokens_before.append(x.shape[1])
        self.plugin.tokens_after.append(x.shape[1] - merge.merged.shape[1] if merge is not None else x.shape[1])
        return args, kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        self.plugin.current = None
        return output


class _MergeAround(ModelHook):
    """Merge a sub-module's token input and unmerge its output (``m_a``/``u_a`` in tomesd)."""

    def __init__(self, plugin: ToMeSDPlugin) -> None:
        self.plugin = plugin
        self.active: GridMerge | None = None

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        merge = self.active = self.plugin.current
        if merge is None:
            return args, kwargs
        if args:
            return (merge.merge(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": merge.merge(kwargs["hidden_states"])}

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        merge, self.active = self.active, None
        return output if merge is None else merge.unmerge(output)
