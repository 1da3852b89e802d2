"""PyramidDrop (Xing et al., CVPR'25): rank image tokens by the last instruction token's
attention at stage boundaries and keep a shrinking fraction, so deeper layers see fewer.
"""

from __future__ import annotations

from typing import Any

import torch

from mmeff.adapters.vlm import VLMAdapter
from mmeff.registry import register_plugin
from mmeff.token_drop.engine import SelectionInput
from mmeff.token_drop.plugin_base import DecoderDropPlugin
from mmeff.token_drop.scoring import attention_at_layer
from mmeff.token_drop.stats import query_scoring_flops

from .config import PyramidDropConfig
from .ops import stage_keep_counts, topk_mask


@register_plugin
class PyramidDropPlugin(DecoderDropPlugin):
    name = "pyramid_drop"
    config_cls = PyramidDropConfig
    description = "PyramidDrop: staged image-token dropping ranked by last-instruction-token attention"

    config: PyramidDropConfig

    def boundaries(self, adapter: VLMAdapter) -> tuple[int, ...]:
        return self.config.resolve_layers(adapter.num_layers)

    def select(self, inp: SelectionInput) -> torch.Tensor:
        scores = attention_at_layer(self.adapter, inp.layer_idx, inp.hidden, inp.cos_sin, inp.query_slot[:, None],
                                    inp.layout.key_valid, inp.layout.idx)[:, 0]
        counts = stage_keep_counts(inp.original_image_counts, self.config.ratio, inp.stage)
        return topk_mask(scores, inp.layout.image & inp.layout.valid, counts)

    def scoring_flops(self) -> float:
        layouts = self.engine.layer_layouts()
        hidden = self.adapter.text_config.hidden_size
        return sum(query_scoring_flops(float(layouts[b].key_valid.sum(-1).float().mean()), hidden)
                   for b in self.boundaries(self.adapter))

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        return {"ratio": self.config.ratio, **out} if out else out
