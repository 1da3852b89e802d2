"""M3ID (Favero et al., CVPR'24): the negative branch is the prompt without the image; its
weight ``w_t = exp(lam t) - 1`` grows as the image's influence fades over the answer, and it
is applied only where the model is unsure."""

from __future__ import annotations

from typing import Any

import torch

from mmeff.contrastive.decode import Branch
from mmeff.contrastive.ops import m3id_combine
from mmeff.contrastive.plugin_base import ContrastivePlugin
from mmeff.registry import register_plugin

from .config import M3IDConfig


@register_plugin
class M3IDPlugin(ContrastivePlugin):
    name = "m3id"
    config_cls = M3IDConfig
    description = "M3ID: contrast with the text-only prompt, weighted up as the answer grows"
    config: M3IDConfig

    def __init__(self, config: M3IDConfig) -> None:
        super().__init__(config)
        self._offset: torch.Tensor | None = None

    def negative(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str]) -> Branch:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        text = (mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool))
        text &= ~self.adapter.image_token_mask(ids)  # the image counts once, not as its hundreds of placeholders
        lengths = text.sum(-1) + 1
        self._offset = lengths.float() if self.config.count_prompt else torch.zeros(len(prompts))
        return Branch.from_inputs(self.adapter.build_inputs(images, prompts, with_images=False))

    def combine(self, logits_pos: torch.Tensor, logits_neg: torch.Tensor | None, step: int) -> torch.Tensor:
        t = self._offset.to(logits_pos.device) + step + 1
        c = self.config
        return m3id_combine(logits_pos, logits_neg, t, c.lam, c.threshold, scale=c.alpha)
