"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a fixed number of image tokens per image."""

from __future__ import annotations

from typing import Any

import torch

from ..registry import register_adapter
from .vlm import VLMAdapter


@register_adapter
class LlavaAdapter(VLMAdapter):
    key = "llava"
    model_types = ("llava",)
    description = "LLaVA-1.5 (CLIP ViT + projector + Llama/Vicuna), fixed image-token count"

    @property
    def tokens_per_image(self) -> int:
        cfg = self.model.config
        vision = cfg.vision_config
        n = (vision.image_size // vision.patch_size) ** 2
        return n + (1 if cfg.vision_feature_select_strategy == "full" else 0)

    def check_token_counts(self, input_ids: torch.Tensor, model_inputs: dict[str, Any]) -> None:
        super().check_token_counts(input_ids, model_inputs)
        self.check_tokens_per_image(input_ids, model_inputs, self.tokens_per_image)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_tokens_per_image": self.tokens_per_image}
