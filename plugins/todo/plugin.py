"""ToDo (Smith, Saxena & Saha, 2024) by hooks on the self-attention of diffusers' transformer blocks.

The release installs its own attention processor on every ``BasicTransformerBlock.attn1``; mmeff
leaves the processor alone and hands ``attn1`` its keys/values source as ``encoder_hidden_states``:
the block's normalised tokens, downsampled on their grid (or ToMe-merged late in sampling, as the
release's secondary method). Queries keep every token, so the output needs no unmerge.

Known difference: the release picks a block's level by its channel width (320: level 1, 640: level
2, as in SD 1.x/2.x), which makes it a no-op on UNets of other widths; mmeff picks it by the block's
grid downsampling (1: level 1, 2: level 2), which is the same on SD 1.x/2.x.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from mmeff.hooks import ModelHook
from mmeff.plugin import Plugin, PluginContext
from mmeff.plugins.tome_sd.grid import CellDestinations, DenoiserInput, require_blocks
from mmeff.plugins.tome_sd.ops import grid_merge
from mmeff.registry import register_plugin

from .config import ToDoConfig
from .ops import downsample_tokens


@register_plugin
class ToDoPlugin(Plugin):
    name = "todo"
    config_cls = ToDoConfig
    supports = ("diffusers_t2i", "pixart")
    refused = {"flux": "Flux attends over text and image tokens jointly (no BasicTransformerBlock self-attention "
                       "over image tokens alone to downsample); not built yet"}
    description = "ToDo: downsample the keys and values of self-attention in diffusion transformer blocks"
    config: ToDoConfig

    def __init__(self, config: ToDoConfig) -> None:
        super().__init__(config)
        self.grid: tuple[int, int] | None = None
        self.timestep: float | None = None
        self.cells = CellDestinations(config.sx, config.sy, config.use_rand, config.seed)
        self.kv_before: list[int] = []
        self.kv_after: list[int] = []

    def check(self, ctx: PluginContext) -> None:
        require_blocks(ctx, self.name)

    def attach(self, ctx: PluginContext) -> None:
        ctx.add_hook(ctx.adapter.denoiser, "grid", DenoiserInput(ctx.adapter.denoiser, self._denoiser_call))
        for i, block in enumerate(require_blocks(ctx, self.name)):
            ctx.add_hook(block.attn1, f"block{i}.attn1", _KeysValues(self))

    def reset(self) -> None:
        self.kv_before, self.kv_after = [], []
        self.cells.reset()

    def _denoiser_call(self, grid: tuple[int, int], timestep: float | None) -> None:
        self.grid, self.timestep, self.kv_before, self.kv_after = grid, timestep, [], []

    def stats(self) -> dict[str, Any]:
        """Per self-attention of the last denoiser call: key/value tokens in, and after ToDo."""
        return {"kv_tokens_before": list(self.kv_before), "kv_tokens_after": list(self.kv_after),
                "timestep": self.timestep}

    def keys_values(self, x: torch.Tensor) -> torch.Tensor | None:
        """The release's ``compute_merge`` for ``merge_tokens="keys/values"``: the reduced source, or None."""
        c = self.config
        if self.grid is None or self.timestep is None or x.ndim != 3:
            return None
        height, width = self.grid
        downsample = math.ceil(math.sqrt(height * width // x.shape[1]))
        level = {1: (c.downsample_factor, c.ratio), 2: (c.downsample_factor_level_2, c.ratio_level_2)}.get(downsample)
        if level is None or self.timestep / 1000 <= c.timestep_threshold_stop:
            return None
        factor, ratio = level
        method = "downsample" if self.timestep / 1000 > c.timestep_threshold_switch else c.secondary_merge_method
        if method == "downsample" and factor > 1:
            h, w = height // downsample, width // downsample
            return downsample_tokens(x, h, w, factor, c.downsample_method) if h * w == x.shape[1] else None
        if method == "similarity" and int(x.shape[1] * ratio) > 0:
            h, w = math.ceil(height / downsample), math.ceil(width / downsample)
            return grid_merge(x, self.cells.mask(h, w, x.shape[0]), int(x.shape[1] * ratio)).merge(x)
        return None


class _KeysValues(ModelHook):
    def __init__(self, plugin: ToDoPlugin) -> None:
        self.plugin = plugin

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("encoder_hidden_states") is not None:  # a cross-attention-only block: not self-attention
            return args, kwargs
        x = args[0] if args else kwargs["hidden_states"]
        source = self.plugin.keys_values(x)
        self.plugin.kv_before.append(x.shape[1])
        self.plugin.kv_after.append(x.shape[1] if source is None else source.shape[1])
        return (args, kwargs) if source is None else (args, {**kwargs, "encoder_hidden_states": source})
