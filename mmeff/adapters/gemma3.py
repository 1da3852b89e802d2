"""Gemma 3 (``Gemma3ForConditionalGeneration``): SigLIP, pooled soft tokens, local and global layers.

What differs from LLaVA, and where the engine meets it:

- **A fixed number of soft tokens per image** (``mm_tokens_per_image``, 256 in the released
  models): the SigLIP patch grid is average-pooled 4x4 before the projector, and the processor
  wraps them in ``<start_of_image>`` ... ``<end_of_image>``. Pan-and-scan crops add whole images.
- **Interleaved sliding-window and full-attention layers** (five local to one global), each
  kind with its own rotary table (local theta 10k; global 1M, linearly scaled on 4B and up).
  The engine builds each kind's mask itself after a drop: a local layer sees the survivors of
  the window the unmodified model would use, measured in original token indices (keys
  ``k > q - window``); during decoding it follows the sliding cache, which keeps a layer's last
  ``window - 1`` (surviving) entries.
- **Bidirectional attention among an image's tokens** in prefill, from the processor's
  ``token_type_ids``; the surviving tokens of an image keep attending to each other both ways.
- **Attention scale** ``query_pre_attn_scalar ** -0.5`` and q/k norms: attention-ranked methods
  recompute rows with both (Gemma 3's attention ignores ``attn_logit_softcapping``, and so do they).
- **No CLS token, pooled 4x4 after the tower**: vision-side methods are not offered. DAMRO ranks
  soft tokens by the attention their patches receive in the tower's last layer, pooled as the
  projector pools the patches (:meth:`received_token_scores`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import UnsupportedModelError
from ..registry import register_adapter
from .vlm import VLMAdapter


@register_adapter
class Gemma3Adapter(VLMAdapter):
    key = "gemma3"
    model_types = ("gemma3",)
    description = "Gemma 3 (SigLIP + pooled soft tokens; sliding-window and global layers, bidirectional images)"
    sliding_windows_reproduced: ClassVar[bool] = True
    images_per_prompt: ClassVar[bool] = True
    bidirectional_images: ClassVar[bool] = True
    vision_side_refusal: ClassVar[str | None] = (
        "Gemma 3's SigLIP tower has no CLS token and its patch grid is average-pooled 4x4 into the soft tokens "
        "after the tower; the ranking signal for such towers is not chosen yet"
    )

    @property
    def tokens_per_image(self) -> int:
        return int(self.model.config.mm_tokens_per_image)

    def feature_layer_index(self) -> int:
        raise UnsupportedModelError(f"vision-side reduction on {type(self.model).__name__}: {self.vision_side_refusal}")

    @torch.no_grad()
    def received_token_scores(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image, each soft token's mean received attention over its pooled patches in the tower's
        last layer (:meth:`received_scores`, pooled by the projector's own ``avg_pool``): (images,
        tokens); and the projected features (images, tokens, D), from one tower pass."""
        encoded = self.model.model.get_image_features(pixel_values=pixel_values, output_hidden_states=True,
                                                      return_dict=True)
        scores = self.received_scores(encoded.hidden_states, -1)  # the last layer gives last_hidden_state
        side = self.projector.patches_per_image
        pooled = self.projector.avg_pool(scores.view(-1, 1, side, side)).flatten(1)
        return pooled, encoded.pooler_output

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin per layer type: local and global layers rotate with different tables."""
        ids = self.normalize_positions(position_ids)[0]
        kinds = dict.fromkeys(self.text_config.layer_types)
        return {kind: self.rotary_emb(hidden, ids, kind) for kind in kinds}

    def prefill_kwargs(self, input_ids: torch.Tensor) -> dict[str, Any]:
        """``token_type_ids`` as the processor gives them, so image tokens attend bidirectionally."""
        return {"token_type_ids": self.image_token_mask(input_ids).long()}

    def check_token_counts(self, input_ids: torch.Tensor, model_inputs: dict[str, Any]) -> None:
        super().check_token_counts(input_ids, model_inputs)
        self.check_tokens_per_image(input_ids, model_inputs, self.tokens_per_image)

    def describe(self) -> dict[str, Any]:
        cfg = self.text_config
        return {**super().describe(), "image_tokens_per_image": self.tokens_per_image,
                "sliding_window": cfg.sliding_window, "layer_types": sorted(set(cfg.layer_types))}
