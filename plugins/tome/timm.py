"""ToMe on timm Vision Transformers (Bolya et al., ICLR 2023: the paper's own setting), by hooks.

The release swaps each timm ``Block`` for a subclass whose forward merges ``r`` tokens between
attention and MLP (``tome/patch/timm.py``). mmeff keeps timm's forward and hooks module
boundaries, with the same arithmetic:

- ``attn.qkv``'s output gives the metric (keys averaged over heads);
- ``norm2``'s input is the residual stream after attention: the match is chosen there and the
  MLP runs on the size-weighted merge of it;
- the MLP branch's output (``drop_path2``) is unmerged (each token takes its group's value), so
  timm's own residual add still sees full-length tensors, and the *next* block's input (or the
  final ``norm``'s) is merged by the same match. A weighted mean over a group of equal MLP
  outputs is that output, so this is ``x_merged + mlp(norm2(x_merged))``, the release's result;
- proportional attention (``log(size)`` added to the attention logits) is passed as the blocks'
  ``attn_mask``, which timm adds to the logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from mmeff.errors import UnsupportedModelError
from mmeff.hooks import ModelHook
from mmeff.plugin import PluginContext
from mmeff.token_drop.vision_ops import BipartiteMatch, bipartite_match

from .config import ToMeConfig


class TimmToMe:
    """Per-call state of ToMe on one timm ViT: token sizes, the pending match, the metric."""

    def __init__(self, config: ToMeConfig) -> None:
        self.config = config
        self.sizes: torch.Tensor | None = None
        self.pending: BipartiteMatch | None = None
        self.metric: torch.Tensor | None = None
        self.schedule: list[int] = []
        self.tokens: list[int] = []

    def check(self, ctx: PluginContext) -> None:
        adapter = ctx.adapter
        if adapter.prefix_tokens > 1:
            raise UnsupportedModelError(
                f"tome on timm ViTs handles at most one prefix (CLS) token; this model has {adapter.prefix_tokens} "
                "(a distillation token or registers): not built yet")
        for i, block in enumerate(adapter.blocks):
            missing = [n for n in ("norm1", "attn", "norm2", "mlp", "drop_path2") if not hasattr(block, n)]
            if missing or not hasattr(block.attn, "qkv"):
                raise UnsupportedModelError(f"tome: timm block {i} ({type(block).__name__}) lacks "
                                            f"{missing or ['attn.qkv']}; only the plain ViT block is supported")

    def attach(self, ctx: PluginContext) -> None:
        adapter = ctx.adapter
        self.protect_first = adapter.prefix_tokens == 1
        patches, n_blocks = adapter.patch_tokens, len(adapter.blocks)
        if self.config.r is not None:
            self.schedule = [self.config.r] * n_blocks  # the release's constant r per block
        else:
            left = [patches, *self.config.targets(patches, n_blocks)]
            self.schedule = [a - b for a, b in zip(left, left[1:])]
        ctx.add_hook(adapter.obj, "tome.start", _Start(self))
        for i, block in enumerate(adapter.blocks):
            ctx.add_hook(block, f"tome.block{i}", _BlockInput(self))
            if self.schedule[i] > 0:  # blocks that merge nothing need no metric
                ctx.add_hook(block.attn.qkv, f"tome.block{i}.qkv", _Metric(self, block.attn.num_heads))
            ctx.add_hook(block.norm2, f"tome.block{i}.norm2", _MergeBeforeMlp(self, i))
            ctx.add_hook(block.drop_path2, f"tome.block{i}.mlp_out", _UnmergeMlp(self))
        ctx.add_hook(adapter.obj.norm, "tome.final", _ApplyPending(self))

    def stats(self) -> dict[str, Any]:
        return {"tokens_per_block": list(self.tokens), "final_tokens": self.tokens[-1] if self.tokens else None,
                "r_per_block": list(self.schedule)}

    def apply_pending(self, x: torch.Tensor) -> torch.Tensor:
        if self.pending is None:
            return x
        x, self.sizes = self.pending.merge(x, self.sizes)
        self.pending = None
        return x


class _Start(ModelHook):
    def __init__(self, tome: TimmToMe) -> None:
        self.tome = tome

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self.tome.sizes = self.tome.pending = self.tome.metric = None
        self.tome.tokens = []
        return args, kwargs


class _BlockInput(ModelHook):
    """Apply the previous block's match; pass log(size) as the attention bias (proportional attention)."""

    def __init__(self, tome: TimmToMe) -> None:
        self.tome = tome

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x = self.tome.apply_pending(args[0] if args else kwargs.pop("x"))
        self.tome.tokens.append(x.shape[1])
        if self.tome.config.proportional_attention and self.tome.sizes is not None:
            kwargs = {**kwargs, "attn_mask": self.tome.sizes.log().to(x.dtype)[:, None, None, :]}
        return (x, *args[1:]), kwargs


class _Metric(ModelHook):
    def __init__(self, tome: TimmToMe, heads: int) -> None:
        self.tome, self.heads = tome, heads

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        b, n, _ = output.shape
        self.tome.metric = output.reshape(b, n, 3, self.heads, -1)[:, :, 1].mean(2)  # keys, mean over heads
        return output


class _MergeBeforeMlp(ModelHook):
    def __init__(self, tome: TimmToMe, index: int) -> None:
        self.tome, self.index = tome, index
        self.n = 0

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        tome = self.tome
        r = tome.schedule[self.index]
        match = bipartite_match(tome.metric, r, tome.protect_first) if r > 0 else None
        tome.metric = None
        if match is None:
            return args, kwargs
        x = args[0]
        if tome.sizes is None:
            tome.sizes = x.new_ones(x.shape[:2])
        self.n = x.shape[1]
        merged, _ = match.merge(x, tome.sizes)
        tome.pending = match
        return (merged, *args[1:]), kwargs


class _UnmergeMlp(ModelHook):
    def __init__(self, tome: TimmToMe) -> None:
        self.tome = tome

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        match = self.tome.pending
        if match is None:
            return output
        return match.unmerge(output, output.shape[1] + match.src.shape[1])


class _ApplyPending(ModelHook):
    def __init__(self, tome: TimmToMe) -> None:
        self.tome = tome

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x = self.tome.apply_pending(args[0])
        if self.tome.tokens:
            self.tome.tokens.append(x.shape[1])
        return (x, *args[1:]), kwargs
