"""DivPrune (Alvar et al., CVPR'25): text-agnostic pruning as a max-min diversity problem. Before the
decoder's first layer, each row keeps the image tokens that are most different from each other
(cosine distance of the projector's outputs), so the decoder and its KV cache never see the rest.

It needs no attention, so it runs on every adapter with any attention implementation. On
Qwen-VL it selects among the merger's outputs (what the decoder reads, as the release does on
LLaVA's projector outputs) and kept tokens stay at their M-RoPE positions."""

from __future__ import annotations

import torch

from mmeff.adapters.vlm import VLMAdapter
from mmeff.registry import register_plugin
from mmeff.token_drop.budget import row_counts
from mmeff.token_drop.engine import SelectionInput
from mmeff.token_drop.plugin_base import DecoderDropPlugin

from .config import DivPruneConfig
from .ops import max_min_subset


@register_plugin
class DivPrunePlugin(DecoderDropPlugin):
    name = "divprune"
    config_cls = DivPruneConfig
    scoring_offsets = ()  # ranks by the image embeddings alone
    lowest_layer = 0
    description = "DivPrune: keep the most diverse image tokens (max-min cosine distance) before decoder layer 0"

    config: DivPruneConfig

    def __init__(self, config: DivPruneConfig) -> None:
        super().__init__(config)
        self._ranked: list[int] = []  # image tokens ranked per row in the last prefill

    def boundaries(self, adapter: VLMAdapter) -> tuple[int, ...]:
        return (0,)

    def select(self, inp: SelectionInput) -> torch.Tensor:
        candidates = inp.layout.image & inp.layout.valid
        counts = row_counts(inp.original_image_counts, self.config.kept)
        keep = torch.zeros_like(candidates)
        self._ranked = []
        for row in range(candidates.shape[0]):
            slots = candidates[row].nonzero().squeeze(-1)
            if slots.numel():
                keep[row, slots[max_min_subset(inp.hidden[row, slots], int(counts[row]))]] = True
                self._ranked.append(slots.numel())
        return keep

    def scoring_flops(self) -> float:
        """The cosine-distance matrix of each row's image tokens, averaged over rows."""
        if not self._ranked:
            return 0.0
        width = self.adapter.text_config.hidden_size
        return sum(2.0 * n * n * width for n in self._ranked) / len(self._ranked)
