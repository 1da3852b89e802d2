"""random_drop: the control for token reduction. A method that does not beat a random subset
of the same size has learnt nothing about which tokens matter."""

from __future__ import annotations

import torch

from mmeff.adapters.vlm import VLMAdapter
from mmeff.registry import register_plugin
from mmeff.token_drop.budget import row_counts
from mmeff.token_drop.engine import SelectionInput
from mmeff.token_drop.plugin_base import DecoderDropPlugin

from .config import RandomDropConfig
from .ops import random_keep


@register_plugin
class RandomDropPlugin(DecoderDropPlugin):
    name = "random_drop"
    config_cls = RandomDropConfig
    scoring_offsets = ()  # ranks by chance, so any decoder attention will do
    lowest_layer = 0
    description = "random_drop: keep a seeded random subset of image tokens (the control)"

    config: RandomDropConfig

    def boundaries(self, adapter: VLMAdapter) -> tuple[int, ...]:
        return (self.config.layer,)

    def select(self, inp: SelectionInput) -> torch.Tensor:
        counts = row_counts(inp.original_image_counts, self.config.kept)
        return random_keep(inp.layout.image & inp.layout.valid, counts, self.config.seed)
