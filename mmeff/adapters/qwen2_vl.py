"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``).

What differs from LLaVA, and where the engine meets it:

- **Dynamic resolution.** Each image gives ``t * h * w / merge**2`` tokens (its
  ``image_grid_thw`` row), so rows of a batch hold different counts; videos give
  ``video_grid_thw`` tokens between ``<|vision_start|>`` and ``<|vision_end|>``. Image *and*
  video placeholders are vision tokens to token-reduction methods.
- **M-RoPE.** Position ids are ``(3, B, L)`` (temporal, height, width); text tokens carry the
  same id on all three rows, and the text after an image continues at the image's largest id
  + 1, so an ``h x w`` grid spans ``max(h, w)`` ids, not ``h * w``. Dropped tokens therefore
  leave no run of ids to close: every stage keeps the survivors' original ``(t, h, w)`` ids and
  decoding continues with the model's own ``rope_deltas`` (the engine's ``keep`` convention;
  ``compact`` has no meaning here and falls back to it).
- **No CLS token, windowed ViT attention (2.5), a 2x2 patch merger.** VisionZip ranks by the
  attention each patch receives in the tower's last block and selects among the merger's
  outputs, as its Qwen2.5-VL release does (:mod:`mmeff.token_drop.merged_vision`); methods that
  merge inside the ViT (ToMe, MustDrop's local merge) have no such port and are refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import InputError, UnsupportedModelError
from ..registry import register_adapter
from .vlm import VLMAdapter


@register_adapter
class Qwen2VLAdapter(VLMAdapter):
    key = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    description = "Qwen2-VL / Qwen2.5-VL (dynamic resolution, M-RoPE, images and videos)"
    position_axes: ClassVar[int] = 3
    supports_video: ClassVar[bool] = True
    vision_side_refusal: ClassVar[str | None] = (
        "the Qwen-VL vision tower has no CLS token, and its 2x2 patch merger needs the whole patch grid, so merging "
        "inside the tower (ToMe, MustDrop's local merge) has no released port to follow"
    )
    vision_signal: ClassVar[str] = "received"

    @property
    def video_token_id(self) -> int:
        return int(self.model.config.video_token_id)

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids == self.image_token_id) | (input_ids == self.video_token_id)

    @property
    def vision_tower(self):
        return self._part("visual")

    @property
    def vision_layers(self):
        raise UnsupportedModelError(f"vision-side reduction on {type(self.model).__name__}: {self.vision_side_refusal}")

    def feature_layer_index(self) -> int:
        self.vision_layers  # noqa: B018 -- raises with the reason
        return -1

    def check_token_counts(self, input_ids: torch.Tensor, model_inputs: dict[str, Any]) -> None:
        merge = self.merge_size**2
        for kind, token, grid_key, pixels_key in (
            ("image", self.image_token_id, "image_grid_thw", "pixel_values"),
            ("video", self.video_token_id, "video_grid_thw", "pixel_values_videos"),
        ):
            n_tokens = int((input_ids == token).sum())
            grid = model_inputs.get(grid_key)
            if model_inputs.get(pixels_key) is None or grid is None:
                if n_tokens:
                    raise InputError(f"the prompts hold {n_tokens} {kind} tokens but no {pixels_key}/{grid_key}")
                continue
            expected = int(grid.prod(-1).sum()) // merge
            if n_tokens != expected:
                raise InputError(
                    f"{grid.shape[0]} {kind}(s) need {expected} {kind} tokens ({grid_key} {grid.tolist()}, "
                    f"merge {self.merge_size}x{self.merge_size}) but input_ids hold {n_tokens}"
                )

    def branch_positions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """M-RoPE ids from the model's own ``get_rope_index`` (image rows in the order of ``image_grid_thw``)."""
        types = (input_ids == self.image_token_id).int()
        if not bool(types.any()):
            return super().branch_positions(input_ids, attention_mask)
        if (input_ids == self.video_token_id).any():
            raise InputError("contrastive decoding on video inputs is not supported yet; pass images")
        positions, deltas = self.model.base_model.get_rope_index(
            input_ids, types, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
        return positions, deltas.to(positions.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "positions": "M-RoPE (t, h, w)", "merge": self.merge_size}


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL (dense): as Qwen2.5-VL for the engine, plus q/k norms in attention, interleaved
    M-RoPE, timestamps between video frames, and *deepstack* features from three vision blocks
    added to the visual tokens after the first decoder layers (the engine adds them to the
    visual tokens still present, so drops may come before those layers)."""

    key = "qwen3_vl"
    model_types = ("qwen3_vl",)
    description = "Qwen3-VL (dense; M-RoPE, q/k norms, deepstack vision features), images and videos"
