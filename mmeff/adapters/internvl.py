"""InternVL2.5 / InternVL3 in transformers' format (``InternVLForConditionalGeneration``).

What differs from LLaVA, and where the engine meets it:

- **Dynamic tiling.** The processor cuts each image into the grid of 448-px tiles (1..12 by default)
  whose aspect ratio is closest to the image's, plus a thumbnail tile when the grid has more than one;
  every tile gives ``image_seq_length`` tokens (256 on the released models). Rows of a batch therefore
  hold different counts. ``pixel_values`` is ``(tiles, 3, H, W)`` over the whole batch, with no
  per-image tile count, so :meth:`InternVLAdapter.check_token_counts` checks the placeholders against
  the tiles: ``context tokens == tiles * tokens_per_tile`` and every ``<img>...</img>`` run a whole
  number of tiles.
- **Placeholders.** An image is ``<img>`` + context tokens + ``</img>``; only the context tokens
  (``config.image_token_id``) carry image features, so only they are vision tokens to token reduction.
- **Video as frames.** A video is expanded by the processor to ``FrameN: <img>...</img>`` per frame,
  each frame one tile, and its pixels are merged into ``pixel_values`` in prompt order; to the model
  (and to every plugin) a video is a run of images.
- **1-D RoPE.** The decoder is a plain Qwen2 or Llama, so positions are LLaVA's (``position_axes = 1``)
  and the engine's ``compact`` convention applies unchanged.
- **Vision tower.** InternViT has a CLS token, but the image features are its patch tokens after a 2x2
  pixel shuffle (four patches concatenated into one token) and an MLP. ``tile_token_patches`` maps a
  token back to its four patches (DAMRO ranks tokens by their patches' CLS attention through it);
  VisionZip, ToMe and MustDrop's merge would have to select or merge whole 2x2 blocks per tile, which
  is not built yet.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import InputError, UnsupportedModelError
from ..registry import register_adapter
from .vlm import VLMAdapter


@register_adapter
class InternVLAdapter(VLMAdapter):
    key = "internvl"
    model_types = ("internvl",)
    description = "InternVL2.5 / 3 (InternViT + pixel shuffle, dynamic 448-px tiling, images and videos as frames)"
    supports_video: ClassVar[bool] = True

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens one tile gives: ``(image_size / patch_size)**2`` patches times ``downsample_ratio**2``."""
        cfg = self.model.config
        vision = cfg.vision_config
        size, patch = _pair(vision.image_size), _pair(vision.patch_size)
        patches = (size[0] // patch[0]) * (size[1] // patch[1])
        return int(round(patches * cfg.downsample_ratio**2))

    def _marker_ids(self) -> tuple[int | None, int | None]:
        """The ``<img>`` / ``</img>`` ids from the processor's tokenizer (the model config does not hold them)."""
        tokenizer = getattr(self.processor, "tokenizer", None)
        ids = (getattr(tokenizer, "start_image_token_id", None), getattr(tokenizer, "end_image_token_id", None))
        return ids if None not in ids else (None, None)

    @property
    def vision_layers(self):
        raise UnsupportedModelError(
            "InternVL's image tokens are InternViT patches merged 2x2 by a pixel shuffle (four patches "
            "concatenated per token) after the tower; vision-side reduction (VisionZip, ToMe, MustDrop's merge, "
            "DAMRO's outliers) would need the map from merged tokens back to patches, which is not built yet"
        )

    def feature_layer_index(self) -> int:
        self.vision_layers  # noqa: B018 -- raises with the reason
        return -1

    def check_token_counts(self, input_ids: torch.Tensor, model_inputs: dict[str, Any]) -> None:
        mask = self.image_token_mask(input_ids)
        n_tokens = int(mask.sum())
        pixel_values = model_inputs.get("pixel_values")
        if pixel_values is None:
            if n_tokens:
                raise InputError(f"the prompts hold {n_tokens} image tokens but no pixel_values were given")
            return
        per_tile = self.tokens_per_tile
        tiles = int(pixel_values.shape[0])
        if n_tokens != tiles * per_tile:
            raise InputError(
                f"pixel_values hold {tiles} tile(s), which need {tiles * per_tile} image tokens ({per_tile} per "
                f"tile) but input_ids hold {n_tokens}; build the prompt with the processor, which expands each "
                "image to <img> + its tiles' tokens + </img>"
            )
        start_id, end_id = self._marker_ids()
        if start_id is None:
            return
        for row in range(input_ids.shape[0]):
            ids = input_ids[row]
            starts = (ids == start_id).nonzero().squeeze(-1).tolist()
            ends = (ids == end_id).nonzero().squeeze(-1).tolist()
            if len(starts) != len(ends) or any(s >= e for s, e in zip(starts, ends)) or any(
                    e >= s for e, s in zip(ends, starts[1:])):
                raise InputError(f"prompt {row}: <img> and </img> markers do not pair up ({len(starts)} <img>, "
                                 f"{len(ends)} </img>)")
            inside = torch.zeros_like(mask[row])
            for i, (s, e) in enumerate(zip(starts, ends)):
                run = int(mask[row, s + 1:e].sum())
                if run != e - s - 1 or run == 0 or run % per_tile:
                    raise InputError(
                        f"prompt {row}, image {i}: {e - s - 1} tokens between <img> and </img>, {run} of them image "
                        f"tokens; each image needs a whole number of tiles of {per_tile} image tokens and nothing else"
                    )
                inside[s + 1:e] = True
            stray = int((mask[row] & ~inside).sum())
            if stray:
                raise InputError(f"prompt {row}: {stray} image tokens outside <img>...</img>")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_tokens_per_tile": self.tokens_per_tile,
                "downsample_ratio": self.model.config.downsample_ratio}


    @property
    def internvit_layers(self):
        """InternViT's encoder layers (``layernorm_before``, ``attention.{q,k}_proj`` and ``q/k_norm``)."""
        return self.vision_tower.encoder.layer

    @torch.no_grad()
    def tile_token_patches(self) -> torch.Tensor:
        """The patch-to-token map of one tile: (tokens per tile, patches per token) indices into the tile's
        patch grid (CLS excluded), read off the model's own ``pixel_shuffle`` run on patch indices, so it
        follows the installed transformers' layout."""
        cfg = self.model.config
        side = int(round((self.tokens_per_tile / cfg.downsample_ratio**2) ** 0.5))
        ids = torch.arange(side * side, dtype=torch.float64).view(1, side, side, 1)
        shuffled = self.model.model.pixel_shuffle(ids, scale_factor=cfg.downsample_ratio)
        return shuffled.reshape(-1, shuffled.shape[-1]).long()

    @torch.no_grad()
    def cls_token_scores(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per tile, each image token's share of the CLS token's attention at the feature layer (DAMRO's
        rule: one head over the full width, the layer's own q/k norms), averaged over the token's patches:
        (tiles, tokens per tile); and the projected features (tiles, tokens per tile, D), one tower pass."""
        cfg = self.model.config
        if cfg.vision_feature_layer != -1 or cfg.vision_feature_select_strategy != "default":
            raise UnsupportedModelError(
                "InternVL CLS scores need the last ViT layer's patches as features (vision_feature_layer=-1, "
                f"strategy 'default'); this model has {cfg.vision_feature_layer!r}, "
                f"{cfg.vision_feature_select_strategy!r}")
        encoded = self.model.model.get_image_features(pixel_values=pixel_values, vision_feature_layer=-1,
                                                      vision_feature_select_strategy="default",
                                                      output_hidden_states=True, return_dict=True)
        return self.token_cls_share(encoded.hidden_states[-2]), encoded.pooler_output

    @torch.no_grad()
    def token_cls_share(self, last_layer_input: torch.Tensor) -> torch.Tensor:
        """(tiles, tokens per tile) from the last InternViT layer's input: the CLS row of one head over
        the full width with the layer's own q/k norms, averaged over each token's four patches."""
        layer = self.internvit_layers[-1]
        x = layer.layernorm_before(last_layer_input)
        q = layer.attention.q_norm(layer.attention.q_proj(x[:, :1]))
        k = layer.attention.k_norm(layer.attention.k_proj(x))
        cls = ((q.float() @ k.float().transpose(1, 2)) * k.shape[-1] ** -0.5).softmax(-1)[:, 0, 1:]
        return cls[:, self.tile_token_patches().to(cls.device)].mean(-1)


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))
