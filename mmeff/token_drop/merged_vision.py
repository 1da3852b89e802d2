"""Vision-side reduction for towers whose LLM tokens are merged patch blocks (Qwen2/2.5/3-VL).

Such a tower has no CLS token, and its 2x2 patch merger needs the whole patch grid, so tokens
cannot leave inside it. Following VisionZip's Qwen2.5-VL release, the tower runs in full; its
last block's attention is recomputed to rank patches by the attention they *receive* (heads
averaged, query rows summed, within each of the block's attention segments), each merged token
scores the mean of its patches, and the selection happens on the merger's output, one image or
video at a time, in the order the LLM reads the tokens. Dropped tokens become zero rows, which
the shared :class:`DropEngine` removes before decoder layer 0, so the decoder and its KV cache
hold only the survivors, at their original M-RoPE positions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..adapters.vlm import VLMAdapter
from ..hooks import ModelHook
from ..plugin import PluginContext
from .engine import DropEngine
from .vision import ZeroRowStage
from .vision_ops import received_attention


@dataclass
class MergedTokens:
    """One image or video as the merger emits it, in LLM order: what a selection sees."""

    features: torch.Tensor  # (n, D) merger outputs
    scores: torch.Tensor  # (n,) attention received by the token's patches (mean over its patches)
    keys: torch.Tensor  # (n, d) last block's keys, rotary applied, mean over heads and the token's patches


#: ``select(item) -> (kept features (m, D), the index each one is written at (m,))``
MergedSelect = Callable[[MergedTokens], tuple[torch.Tensor, torch.Tensor]]
#: ``observe(items)``: every image or video of one tower call, in LLM order; the features stay as they are
MergedObserve = Callable[[list[MergedTokens]], None]


class MergedVisionReducer(ZeroRowStage):
    """Owns the hooks of one vision-side plugin on a merged-token tower: it reduces with ``select``, or only
    watches with ``observe`` (MustDrop's key set), never both."""

    def __init__(self, owner: str, select: MergedSelect | None = None, *, observe: MergedObserve | None = None
                 ) -> None:
        if (select is None) == (observe is None):
            raise ValueError("MergedVisionReducer takes exactly one of select and observe")
        self.owner, self.select, self.observe = owner, select, observe
        self.engine: DropEngine | None = None
        self.adapter: VLMAdapter | None = None
        self._grid: torch.Tensor | None = None
        self._last_block: tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None

    def attach(self, ctx: PluginContext) -> None:
        adapter = ctx.adapter
        self.adapter = adapter
        tower = adapter.vision_tower
        ctx.add_hook(tower, "tower", _TowerHook(self))
        ctx.add_hook(tower.blocks[-1], "last_block", _LastBlockHook(self))
        if self.select is not None:
            self.add_zero_row_stage(adapter)

    def reset(self) -> None:
        self._grid, self._last_block = None, None

    # -- hooks ---------------------------------------------------------------------------
    def on_tower_input(self, args: tuple, kwargs: dict) -> None:
        self._grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        self._last_block = None

    def on_last_block(self, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self._last_block = (hidden, kwargs["cu_seqlens"], kwargs["position_embeddings"])

    def on_tower_output(self, output):
        if self._grid is None or self._last_block is None:
            return output
        items = self._items(output.pooler_output)
        self.reset()
        if self.observe is not None:
            self.observe(items)
            return output
        out = torch.zeros_like(output.pooler_output)
        start = 0
        for item in items:
            features, where = self.select(item)
            out[start + where] = features.to(out.dtype)
            start += item.features.shape[0]
        output.pooler_output = out
        return output

    # -- the selection ---------------------------------------------------------------------
    def _items(self, merged: torch.Tensor) -> list[MergedTokens]:
        """The tower call's images or videos, each with its signal, in the LLM's order."""
        tower = self.adapter.vision_tower
        scores, keys = merged_token_signal(tower, *self._last_block, self._grid)
        items, start = [], 0
        for n in merged_counts(tower, self._grid):
            items.append(MergedTokens(merged[start : start + n], scores[start : start + n], keys[start : start + n]))
            start += n
        return items


def merged_counts(tower, grid: torch.Tensor) -> list[int]:
    """LLM tokens of each image or video (its ``grid_thw`` row over the 2x2 merge)."""
    return (grid.prod(-1) // tower.spatial_merge_size**2).tolist()


@torch.no_grad()
def merged_token_signal(tower, hidden: torch.Tensor, cu_seqlens: torch.Tensor, cos_sin, grid: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per merged token, in the LLM's order: the attention its patches receive in the tower's last block
    (mean over the patches), and the block's rotary keys averaged over heads and the patches.
    ``hidden``, ``cu_seqlens`` and ``cos_sin`` are that block's inputs."""
    unit = tower.spatial_merge_size**2
    block = tower.blocks[-1]
    attn = block.attn
    length = hidden.shape[0]
    qkv = attn.qkv(block.norm1(hidden)).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3)
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
    q, k = rotate(qkv[0], qkv[1], *cos_sin)  # (S, H, d)
    q, k = q.transpose(0, 1), k.transpose(0, 1)  # (H, S, d)
    received = received_attention(q, k, cu_seqlens.tolist(), attn.scaling)
    scores = received.view(-1, unit).mean(-1)
    keys = k.float().mean(0).view(length // unit, unit, -1).mean(1)
    order = _llm_order(tower, grid)
    return scores[order], keys[order]


@torch.no_grad()
def tower_signal(tower, pixel_values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """:func:`merged_token_signal`'s scores from one pass of the tower over ``pixel_values`` (DAMRO's outliers)."""
    captured: dict[str, tuple] = {}

    def last_block(module, args, kwargs):
        captured["inputs"] = (args[0] if args else kwargs["hidden_states"], kwargs["cu_seqlens"],
                              kwargs["position_embeddings"])

    handle = tower.blocks[-1].register_forward_pre_hook(last_block, with_kwargs=True)
    try:
        tower(pixel_values, grid_thw=grid)
    finally:
        handle.remove()
    return merged_token_signal(tower, *captured["inputs"], grid)[0]


def _llm_order(tower, grid: torch.Tensor) -> torch.Tensor:
    """Merged tokens' block order -> the order the merger's output is returned in (Qwen2.5-VL
    runs its blocks on a window-permuted sequence and undoes it after the merger)."""
    module = sys.modules[type(tower).__module__]
    n = sum(merged_counts(tower, grid))
    if not hasattr(module, "get_vision_window_index") or not hasattr(tower, "window_size"):
        return torch.arange(n, device=grid.device)
    window_index, _ = module.get_vision_window_index(
        grid, spatial_merge_size=tower.spatial_merge_size, window_size=tower.window_size,
        patch_size=tower.patch_size, kwargs={},
    )
    return torch.argsort(window_index)


class _TowerHook(ModelHook):
    stateful = True

    def __init__(self, reducer: MergedVisionReducer) -> None:
        self.reducer = reducer

    def pre_forward(self, module, args, kwargs):
        self.reducer.on_tower_input(args, kwargs)
        return args, kwargs

    def post_forward(self, module, output):
        return self.reducer.on_tower_output(output)

    def reset_state(self, module) -> None:
        self.reducer.reset()


class _LastBlockHook(ModelHook):
    def __init__(self, reducer: MergedVisionReducer) -> None:
        self.reducer = reducer

    def pre_forward(self, module, args, kwargs):
        self.reducer.on_last_block(args, kwargs)
        return args, kwargs
