"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres tiles plus ``image_newline``.

The number of image tokens depends on each image's size and aspect ratio, so rows of a
batch hold different numbers of image tokens; plugins must not assume a fixed count.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

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

    def crops_per_image(self, image_sizes: torch.Tensor) -> list[int]:
        """Crops the tower sees per image: the base (overview) crop, then the anyres tiles."""
        cfg = self.model.config
        return [image_size_to_num_patches(image_size=size, grid_pinpoints=cfg.image_grid_pinpoints,
                                          patch_size=cfg.vision_config.image_size) for size in image_sizes]

    @torch.no_grad()
    def patch_positions(self, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """The patch-to-position map: per image, for each of its packed image tokens (in prompt order), the
        ViT patch it carries as an index into (all crops of the batch, crop-major) x grid², or -1 for an
        ``image_newline``. Built by running the model's own ``pack_image_features`` (reshape, unpad,
        newlines) on patch indices, so it follows whatever packing the installed transformers does."""
        crops = self.crops_per_image(image_sizes)
        n = self.patch_grid**2
        ids = torch.arange(sum(crops) * n, dtype=torch.float64).view(sum(crops), n, 1)
        marker = torch.tensor([-1.0], dtype=torch.float64)
        packed, _ = self.model.model.pack_image_features(
            list(torch.split(ids, crops)), image_sizes, vision_feature_select_strategy="default", image_newline=marker)
        return [p[:, 0].long() for p in packed]
