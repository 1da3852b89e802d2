"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): SigLIP + Qwen2, anyres tiles, videos.

What differs from LLaVA-NeXT, and where the engine meets it:

- **Images.** An image alone in its prompt is tiled (anyres) like LLaVA-NeXT: ``g*g`` base-tile
  features, then the unpadded tile grid with one ``image_newline`` per row, and a grid larger
  than ``anyres_max_N`` tiles' worth is bilinearly shrunk first. An image that shares its
  prompt with others *when the processor is given them nested per prompt* (``batch_num_images``
  > 1) is not tiled: ``g*g + 1`` tokens. mmeff's ``build_inputs`` hands the processor a flat list
  (as the model card's batched example does), so every image is tiled; :meth:`check_token_counts`
  follows ``batch_num_images`` either way.
- **Videos.** Each frame's ``g*g`` features are 2x2-pooled (bilinear) after the projector, and one
  ``image_newline`` closes the clip: ``frames * ceil(g/2)**2 + 1`` ``<video>`` tokens. Image *and*
  video placeholders are vision tokens to token-reduction methods.
- **Positions.** The decoder is Qwen2 with 1-D RoPE, so the decoder-side engine runs as on LLaVA
  (``compact`` positions, attention rows of ``Qwen2Attention``).
- **No CLS token.** SigLIP has none and the features are the last layer's, all of them
  (``vision_feature_select_strategy="full"``). The vision-side methods rank and scatter around
  LLaVA's CLS slot, so they are not offered here (see :meth:`feature_layer_index`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from transformers.image_processing_utils import select_best_resolution

from ..errors import InputError, UnsupportedModelError
from ..registry import register_adapter
from .vlm import VLMAdapter

NO_CLS_REASON = (
    "LLaVA-OneVision's SigLIP tower has no CLS token and feeds all of its last layer's patches to the "
    "projector (vision_feature_select_strategy='full'), and video frames are 2x2-pooled after the projector; "
    "vision-side reduction (VisionZip, ToMe, MustDrop's merge) ranks and scatters around LLaVA's CLS slot"
)


@register_adapter
class LlavaOnevisionAdapter(VLMAdapter):
    key = "llava_onevision"
    model_types = ("llava_onevision",)
    description = "LLaVA-OneVision (SigLIP + Qwen2, anyres tiles + image_newline, pooled video frames)"
    supports_video: ClassVar[bool] = True

    # -- facts ---------------------------------------------------------------------------
    @property
    def video_token_id(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "video_token_id", None) or cfg.video_token_index)

    @property
    def tile_tokens(self) -> int:
        """Features one tile (or one unpooled frame) gives: ``g*g`` (minus a CLS under "default")."""
        n = self.patch_grid**2
        return n if self.model.config.vision_feature_select_strategy == "full" else n - 1

    @property
    def frame_tokens(self) -> int:
        """Video tokens per frame after the 2x2 pooling."""
        return math.ceil(self.patch_grid / 2) ** 2

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids == self.image_token_id) | (input_ids == self.video_token_id)

    def feature_layer_index(self) -> int:
        raise UnsupportedModelError(NO_CLS_REASON)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tile_tokens": self.tile_tokens, "video_tokens_per_frame": self.frame_tokens}

    # -- token counts --------------------------------------------------------------------
    def image_tokens(self, image_size: tuple[int, int], tiled: bool = True) -> int:
        """Placeholder tokens of one image of ``(height, width)`` pixels, as the model packs it."""
        cfg = self.model.config
        g = self.patch_grid
        if not tiled:
            return self.tile_tokens + 1  # the base tile and one image_newline
        height, width = (int(v) for v in image_size)
        tile = cfg.vision_config.image_size
        best_h, best_w = select_best_resolution((height, width), cfg.image_grid_pinpoints)
        rows, cols = g * (best_h // tile), g * (best_w // tile)
        # unpad_image: drop the padding rows/columns the processor added to keep the aspect ratio
        if width / height > cols / rows:
            new = int(round(height * (cols / width), 7))
            rows -= ((rows - new) // 2) * 2
        else:
            new = int(round(width * (rows / height), 7))
            cols -= ((cols - new) // 2) * 2
        max_tiles = int(cfg.vision_aspect_ratio.removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * cols / (max_tiles * g**2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
        return self.tile_tokens + rows * cols + rows  # base tile, unpadded grid, one newline per grid row

    def video_tokens(self, frames: int) -> int:
        return frames * self.frame_tokens + 1

    def expected_image_tokens(self, model_inputs: dict[str, Any]) -> list[int]:
        """Per image, in batch order, the placeholder count the model will fill."""
        pixel_values = model_inputs.get("pixel_values")
        if pixel_values is None:
            return []
        sizes = model_inputs.get("image_sizes")
        if sizes is None:
            raise InputError("LLaVA-OneVision needs image_sizes alongside pixel_values (the processor returns both)")
        sizes = sizes.tolist() if isinstance(sizes, torch.Tensor) else [list(s) for s in sizes]
        if len(sizes) != pixel_values.shape[0]:
            raise InputError(f"pixel_values hold {pixel_values.shape[0]} image(s) but image_sizes {len(sizes)}")
        per_prompt = model_inputs.get("batch_num_images")
        if per_prompt is None:
            tiled = [True] * len(sizes)
        else:
            per_prompt = [int(n) for n in per_prompt]
            if sum(per_prompt) != len(sizes):
                raise InputError(f"batch_num_images {per_prompt} adds up to {sum(per_prompt)} images, "
                                 f"but {len(sizes)} were given")
            tiled = [n == 1 for n in per_prompt for _ in range(n)]
        return [self.image_tokens(s, t) for s, t in zip(sizes, tiled)]

    def check_token_counts(self, input_ids: torch.Tensor, model_inputs: dict[str, Any]) -> None:
        """Image and video placeholders per row must match, in batch order, what the images/videos give."""
        videos = model_inputs.get("pixel_values_videos")
        video_counts = [] if videos is None else [self.video_tokens(videos.shape[1])] * videos.shape[0]
        for kind, token, key, expected in (
            ("image", self.image_token_id, "pixel_values", self.expected_image_tokens(model_inputs)),
            ("video", self.video_token_id, "pixel_values_videos", video_counts),
        ):
            per_row = (input_ids == token).sum(-1).tolist()
            total = sum(per_row)
            if not expected:
                if total:
                    raise InputError(f"the prompts hold {total} {kind} tokens but no {key} were given")
                continue
            if total != sum(expected):
                raise InputError(
                    f"{len(expected)} {kind}(s) need {sum(expected)} {kind} tokens ({expected} each, in batch order) "
                    f"but input_ids hold {total} ({per_row} per row)"
                )
            # rows take the visuals in order: each row must end on a boundary between two of them
            boundaries = {0, *torch.tensor(expected).cumsum(0).tolist()}
            seen = 0
            for row, n in enumerate(per_row):
                seen += n
                if seen not in boundaries:
                    raise InputError(
                        f"row {row} holds {n} {kind} tokens, which is not a whole number of its {kind}s "
                        f"({expected} tokens each, in batch order)"
                    )

