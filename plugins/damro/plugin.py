"""DAMRO (Gong et al., EMNLP'24): the ViT's CLS token attends to a few outlier patches that
carry little local detail; the negative branch sees only those k image tokens, so what the
model would say from them alone is subtracted.

The outliers come from single-head attention over the full width at the vision feature layer
(the released code hooks that layer's q/k projections). The negative rows keep every image
token but mask all except the k outliers, which is the same computation as a prompt holding
only those k tokens (positions are counted over unmasked tokens), in the release's order: by
descending CLS attention (the kept slots carry the outliers' features in that order).

LLaVA-NeXT, as its release does (``pack_image_features_damro``): the outliers are the base crop's k
patches (the overview image, whose grid² features open each image's packed run), and the negative
image is those k features followed by one ``image_newline``; the tiles are left out. Here that is
the base slots of the outliers plus the run's last slot (a newline) left visible.

InternVL (no release; mmeff's choice): each image token concatenates four InternViT patches (the
2x2 pixel shuffle), so a token's score is the mean CLS attention of its patches at the feature
layer, and an image's k outliers are taken over all its tiles.

Qwen2/2.5/3-VL's tower has no CLS token. There the outliers are the k merged tokens of each image
whose patches *receive* the most attention in the tower's last block: the signal VisionZip's
Qwen2.5-VL release ranks by in place of CLS attention (DAMRO has no release for these towers, so
this is mmeff's choice). Hidden tokens keep their places, so the k survivors keep their M-RoPE ids.

SigLIP towers have no CLS token either (mmeff's choice, the same signal): on LLaVA-OneVision the
outliers are the base tile's k patches that receive the most attention in the layer that gives the
features, packed as on LLaVA-NeXT (then the run's closing ``image_newline``); on Gemma 3 each
image's k soft tokens whose 4x4 pooled patches receive the most, in the tower's last layer. Both
use 1-D RoPE, so positions count over the visible tokens, as on LLaVA.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from mmeff.contrastive.decode import Branch
from mmeff.contrastive.plugin_base import ContrastivePlugin
from mmeff.errors import ConfigError, InputError, UnsupportedModelError
from mmeff.plugin import PluginContext
from mmeff.registry import register_plugin
from mmeff.token_drop.merged_vision import merged_counts, tower_signal
from mmeff.token_drop.vision_ops import cls_attention

from .config import DAMROConfig


@register_plugin
class DAMROPlugin(ContrastivePlugin):
    name = "damro"
    config_cls = DAMROConfig
    supports = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen3_vl", "internvl", "gemma3")
    description = "DAMRO: contrast with only the vision tower's outlier tokens (CLS attention; received attention " \
                  "on towers without CLS)"
    config: DAMROConfig

    def check(self, ctx: PluginContext) -> None:
        adapter = ctx.adapter
        if adapter.vision_signal == "received" or adapter.key == "internvl":
            return  # images differ in token count: k is checked against each image at generate
        if adapter.key == "gemma3":
            n = adapter.tokens_per_image
        elif adapter.key == "llava_onevision":
            layer = adapter.model.config.vision_feature_layer
            if not isinstance(layer, int):
                raise UnsupportedModelError(f"damro ranks patches in the one vision layer that gives the features; "
                                            f"this model concatenates layers {layer!r}")
            n = adapter.tile_tokens  # the base tile's features
        else:
            n = adapter.patch_grid**2  # LLaVA-NeXT: the base crop's patches
            adapter.feature_layer_index()  # raises for models without one feature layer
        if self.config.k > n:
            raise ConfigError(f"damro: k={self.config.k} is more than the {n} image tokens per image; use 1..{n}")

    @torch.no_grad()
    def _encode(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per crop, the CLS row of single-head attention over the full width at the feature layer
        (crops, patches; LLaVA-OneVision: the attention each patch receives there); and the images'
        projected (LLaVA-NeXT/OneVision: packed) features, from one tower pass."""
        adapter = self.adapter
        cfg = adapter.model.config
        extra: dict[str, Any] = {}
        if adapter.key in ("llava_next", "llava_onevision"):
            extra["image_sizes"] = inputs["image_sizes"]
        if adapter.key == "llava_onevision":
            extra.update(vision_aspect_ratio=cfg.vision_aspect_ratio, batch_num_images=inputs.get("batch_num_images"))
        encoded = adapter.model.model.get_image_features(
            pixel_values=inputs["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, output_hidden_states=True, **extra,
        )
        if adapter.key == "llava_onevision":
            received = adapter.received_scores(encoded.hidden_states, cfg.vision_feature_layer)
            skip = 1 if cfg.vision_feature_select_strategy == "default" else 0
            return received[:, skip:], list(encoded.pooler_output)
        idx = adapter.feature_layer_index()
        layer = adapter.vision_layers[idx]
        x = layer.layer_norm1(encoded.hidden_states[idx])
        cls = cls_attention(x, layer.self_attn.q_proj, layer.self_attn.k_proj, num_heads=1)
        return cls[:, 1:], list(encoded.pooler_output)

    def outliers(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N images, k) patch indices by descending CLS attention at the feature layer, and the images'
        projected features (N, patches, D), from one pass of the tower (LLaVA-1.5)."""
        cls, features = self._encode({"pixel_values": pixel_values})
        return cls.topk(self.config.k, dim=-1).indices, torch.stack(features)

    def negative(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str]) -> Branch:
        pixels = inputs.get("pixel_values")
        if pixels is None:
            raise InputError("damro needs pixel_values: its negative branch keeps the image's outlier tokens")
        if self.adapter.vision_signal == "received":
            return self._negative_merged(inputs)
        if self.adapter.key in ("llava_next", "llava_onevision"):
            return self._negative_tiled(inputs)
        if self.adapter.key == "internvl":
            return self._negative_ranked(inputs, *self.adapter.cls_token_scores(pixels))
        if self.adapter.key == "gemma3":
            return self._negative_compact(inputs, *self.adapter.received_token_scores(pixels))
        ids = inputs["input_ids"]
        image = self.adapter.image_token_mask(ids)
        per_row = image.sum(-1)
        n = self.adapter.tokens_per_image
        if not bool((per_row == n).all()):
            raise InputError(f"damro expects one image ({n} image tokens) per prompt; got {per_row.tolist()}")
        by_attention, features = self.outliers(pixels)
        by_attention = by_attention.to(ids.device)
        slots = by_attention.sort(-1).values
        keep = torch.zeros(image.shape[0], n, dtype=torch.bool, device=ids.device)
        keep.scatter_(1, slots, True)
        # the release's order: the kept slots (in patch order) carry the outliers by descending attention
        ordered = features.clone()
        rows = torch.arange(features.shape[0], device=features.device)[:, None]
        ordered[rows, slots.to(features.device)] = features[rows, by_attention.to(features.device)]
        mask = inputs["attention_mask"].clone() if inputs.get("attention_mask") is not None else torch.ones_like(ids)
        hidden = image.clone()
        hidden[image] = ~keep.flatten()
        mask[hidden] = 0
        self._extra = {"outlier_tokens": slots.tolist(), "outliers_by_attention": by_attention.tolist()}
        vision = {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=list(ordered))}}
        return Branch(ids, mask.long(), vision)

    def _negative_tiled(self, inputs: dict[str, Any]) -> Branch:
        """LLaVA-NeXT, as released: per image, the base crop's k outliers (features in descending CLS
        order, in the slots of their patches) and the packed run's closing ``image_newline``.
        LLaVA-OneVision: the same, ranked by received attention."""
        ids = inputs["input_ids"]
        cls, packed = self._encode(inputs)
        cfg = self.adapter.model.config
        per_prompt = inputs.get("batch_num_images")  # OneVision tiles an image only when it is alone in its prompt
        tiled = [True] * len(inputs["image_sizes"]) if per_prompt is None else [
            int(n) == 1 for n in per_prompt for _ in range(int(n))]
        crops = [image_size_to_num_patches(image_size=size, grid_pinpoints=cfg.image_grid_pinpoints,
                                           patch_size=cfg.vision_config.image_size) if tile else 1
                 for size, tile in zip(inputs["image_sizes"], tiled)]
        base = torch.tensor([0, *crops[:-1]]).cumsum(0).to(cls.device)  # each image's first crop
        by_attention = cls[base].topk(self.config.k, dim=-1).indices
        slots = by_attention.sort(-1).values
        features, keep = [], []
        for feats, order, where in zip(packed, by_attention, slots):
            feats = feats.clone()
            feats[where] = feats[order]
            visible = torch.zeros(feats.shape[0], dtype=torch.bool, device=ids.device)
            visible[where.to(ids.device)] = True
            visible[-1] = True  # the image_newline that closes the run (the release appends one)
            features.append(feats)
            keep.append(visible)
        image = self.adapter.image_token_mask(ids)
        flat = torch.cat(keep)
        if int(image.sum()) != flat.numel():
            raise InputError(f"damro: the prompts hold {int(image.sum())} image tokens but the images give "
                             f"{flat.numel()}")
        mask = inputs["attention_mask"].clone() if inputs.get("attention_mask") is not None else torch.ones_like(ids)
        hidden = image.clone()
        hidden[image] = ~flat
        mask[hidden] = 0
        self._extra = {"outlier_tokens": slots.tolist(), "outliers_by_attention": by_attention.tolist()}
        vision = {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=features)}}
        return Branch(ids, mask.long(), vision)

    def _negative_ranked(self, inputs: dict[str, Any], scores: torch.Tensor, features: torch.Tensor) -> Branch:
        """Per image, over all its tiles, the k tokens with the highest ``scores`` (tiles, tokens per tile),
        their ``features`` (tiles, tokens, D) in descending order, in their own slots (no release; mmeff's
        choice). InternVL: the CLS attention of each token's four pixel-shuffled patches; Gemma 3: the
        attention received by each soft token's pooled patches."""
        ids = inputs["input_ids"]
        per_tile = scores.shape[1]
        flat_scores, flat = scores.flatten().to(ids.device), features.flatten(0, 1).clone()
        image = self.adapter.image_token_mask(ids)
        runs = _run_lengths(image)
        if sum(runs) != flat_scores.numel() or any(n % per_tile for n in runs):
            raise InputError(f"damro: image runs of {runs} tokens do not match {scores.shape[0]} tiles of {per_tile}")
        if min(runs) < self.config.k:
            raise InputError(f"damro: k={self.config.k} is more than the {min(runs)} tokens of the smallest image")
        keep = torch.zeros_like(flat_scores, dtype=torch.bool)
        chosen, start = [], 0
        for n in runs:
            order = flat_scores[start : start + n].topk(self.config.k).indices  # descending
            slots = order.sort().values
            flat[start + slots.to(flat.device)] = flat[start + order.to(flat.device)]
            keep[start + slots] = True
            chosen.append(slots.tolist())
            start += n
        mask = inputs["attention_mask"].clone() if inputs.get("attention_mask") is not None else torch.ones_like(ids)
        hidden = image.clone()
        hidden[image] = ~keep
        mask[hidden] = 0
        self._extra = {"outlier_tokens": chosen}
        vision = {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=flat.view_as(features))}}
        return Branch(ids, mask.long(), vision)

    def _negative_compact(self, inputs: dict[str, Any], scores: torch.Tensor, features: torch.Tensor) -> Branch:
        """Gemma 3: the prompt itself cut to each image's k highest-scoring soft tokens (``scores``,
        ``features``: per image), in descending order, left-padded again. Its sliding-window layers count
        slots, not visible tokens, so hiding tokens behind the mask would not be the shorter prompt."""
        ids, k = inputs["input_ids"], self.config.k
        mask = inputs["attention_mask"] if inputs.get("attention_mask") is not None else torch.ones_like(ids)
        image = self.adapter.image_token_mask(ids)
        runs = _run_lengths(image)
        if runs != [features.shape[1]] * features.shape[0]:
            raise InputError(f"damro: image runs of {runs} tokens do not match {features.shape[0]} images of "
                             f"{features.shape[1]} tokens")
        order = scores.topk(k, dim=-1).indices.to(features.device)  # (images, k), descending
        kept = features[torch.arange(features.shape[0], device=features.device)[:, None], order]
        rows = []
        for row_ids, row_mask, row_image in zip(ids, mask.bool(), image):
            run_start = row_image & ~torch.cat([row_image.new_zeros(1), row_image[:-1]])
            run_index = torch.arange(row_ids.numel(), device=ids.device) - torch.cummax(
                torch.where(run_start, torch.arange(row_ids.numel(), device=ids.device), 0), 0).values
            rows.append(row_ids[row_mask & (~row_image | (run_index < k))])
        width = max(r.numel() for r in rows)
        pad = self.adapter.processor.tokenizer.pad_token_id or 0
        short = torch.stack([torch.cat([r.new_full((width - r.numel(),), pad), r]) for r in rows])
        short_mask = torch.stack([torch.arange(width, device=ids.device) >= width - r.numel() for r in rows])
        self._extra = {"outlier_tokens": order.sort(-1).values.tolist(), "outliers_by_attention": order.tolist()}
        vision = {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=kept)}}
        return Branch(short, short_mask.long(), vision)

    def _negative_merged(self, inputs: dict[str, Any]) -> Branch:
        """Qwen-VL: per image, the k merged tokens whose patches receive the most attention."""
        ids, grid = inputs["input_ids"], inputs["image_grid_thw"]
        tower = self.adapter.vision_tower
        counts = merged_counts(tower, grid)
        if min(counts) < self.config.k:
            raise InputError(f"damro: k={self.config.k} is more than the {min(counts)} tokens of the smallest image; "
                             f"use 1..{min(counts)} or larger images")
        scores = tower_signal(tower, inputs["pixel_values"], grid).to(ids.device)
        keep = torch.zeros_like(scores, dtype=torch.bool)
        chosen, start = [], 0
        for n in counts:
            top = scores[start : start + n].topk(self.config.k).indices.sort().values
            keep[start + top] = True
            chosen.append(top.tolist())
            start += n
        image = self.adapter.image_token_mask(ids)
        padding = inputs["attention_mask"].long() if inputs.get("attention_mask") is not None else torch.ones_like(ids)
        hidden = image.clone()
        hidden[image] = ~keep
        mask = padding.clone()
        mask[hidden] = 0
        self._extra = {"outlier_tokens": chosen}
        return Branch(ids, mask, {}, same_images=True, position_mask=padding)


def _run_lengths(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in ``mask`` (B, L), row by row: one per image, in the order the model
    scatters image features."""
    out = []
    for row in mask.tolist():
        n = 0
        for on in [*row, False]:
            if on:
                n += 1
            elif n:
                out.append(n)
                n = 0
    return out
