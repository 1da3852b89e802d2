"""FastV (Chen et al., ECCV'24): one drop at layer K, ranked by layer K-1's attention from the
last prompt token; positions of kept tokens stay as they were (the released convention)."""

from __future__ import annotations

from typing import Any

import torch

from mmeff.adapters.vlm import VLMAdapter
from mmeff.registry import register_plugin
from mmeff.token_drop.budget import row_counts
from mmeff.token_drop.engine import SelectionInput
from mmeff.token_drop.plugin_base import DecoderDropPlugin
from mmeff.token_drop.scoring import attention_at_layer, topk_mask
from mmeff.token_drop.stats import query_scoring_flops

from .config import FastVConfig


@register_plugin
class FastVPlugin(DecoderDropPlugin):
    name = "fastv"
    config_cls = FastVConfig
    position_mode = "keep"
    scoring_offsets = (-1,)  # ranks by layer K-1's attention
    description = "FastV: drop the image tokens the last prompt token ignores, once, at decoder layer K"

    config: FastVConfig

    def boundaries(self, adapter: VLMAdapter) -> tuple[int, ...]:
        return (self.config.k,)

    def select(self, inp: SelectionInput) -> torch.Tensor:
        hidden, cos_sin = inp.prev_input
        scores = attention_at_layer(self.adapter, inp.layer_idx - 1, hidden, cos_sin, inp.query_slot[:, None],
                                    inp.layout.key_valid, inp.layout.idx)[:, 0]
        counts = row_counts(inp.original_image_counts, self.config.kept)
        return topk_mask(scores, inp.layout.image & inp.layout.valid, counts)

    def scoring_flops(self) -> float:
        layouts = self.engine.layer_layouts()
        tokens = float(layouts[self.config.k - 1].key_valid.sum(-1).float().mean())
        return query_scoring_flops(tokens, self.adapter.text_config.hidden_size)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        return {"k": self.config.k, **out} if out else out
