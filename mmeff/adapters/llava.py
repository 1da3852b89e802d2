"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a fixed number of image tokens per image."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
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
        pixel_values = model_inputs.get("pixel_values")
        if pixel_values is None:
            return
        n_tokens = int(self.image_token_mask(input_ids).sum())
        expected = pixel_values.shape[0] * self.tokens_per_image
        if n_tokens != expected:
            raise InputError(
                f"{pixel_values.shape[0]} image(s) need {expected} image tokens "
                f"({self.tokens_per_image} each) but input_ids hold {n_tokens}"
            )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_tokens_per_image": self.tokens_per_image}
