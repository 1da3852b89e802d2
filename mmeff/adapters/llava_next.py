"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres tiles plus ``image_newline``.

The number of image tokens depends on each image's size and aspect ratio, so rows of a
batch hold different numbers of image tokens; plugins must not assume a fixed count.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..registry import register_adapter
from .vlm import VLMAdapter


@register_adapter
class LlavaNextAdapter(VLMAdapter):
    key = "llava_next"
    model_types = ("llava_next",)
    description = "LLaVA-NeXT / 1.6 (anyres tiles + image_newline), variable image-token counts"

    def check_token_counts(self, input_ids: torch.Tensor, model_inputs: dict[str, Any]) -> None:
        super().check_token_counts(input_ids, model_inputs)
        pixel_values = model_inputs.get("pixel_values")
        if pixel_values is None:
            return
        if model_inputs.get("image_sizes") is None:
            raise InputError("LLaVA-NeXT needs image_sizes alongside pixel_values (the processor returns both)")
        mask = self.image_token_mask(input_ids)
        starts = mask & ~torch.nn.functional.pad(mask, (1, 0))[:, :-1]  # one contiguous run per image
        n_runs = int(starts.sum())
        if n_runs != pixel_values.shape[0]:
            raise InputError(
                f"{pixel_values.shape[0]} image(s) given but the prompts hold {n_runs} image placeholder(s)"
            )
