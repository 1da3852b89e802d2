"""Key mapping between the released ``ImageReward.pt`` and :class:`ImageRewardModel`'s modules.

The release is BLIP's timm-style ViT (``blip.visual_encoder.*``), BLIP's BERT with
cross-attention (``blip.text_encoder.*``, the same names as transformers' ``BlipTextModel``)
and the score head (``mlp.layers.*``). Only the ViT needs renaming. Entries outside those
three prefixes (BLIP's contrastive ``vision_proj``/``text_proj``) do not enter the score and are dropped.
"""

from __future__ import annotations

import re

import torch

#: (released name, module name) prefixes; ``{i}`` is a block index
_RULES = (
    ("blip.visual_encoder.cls_token", "vision.embeddings.class_embedding"),
    ("blip.visual_encoder.pos_embed", "vision.embeddings.position_embedding"),
    ("blip.visual_encoder.patch_embed.proj.", "vision.embeddings.patch_embedding."),
    ("blip.visual_encoder.blocks.{i}.norm1.", "vision.encoder.layers.{i}.layer_norm1."),
    ("blip.visual_encoder.blocks.{i}.attn.qkv.", "vision.encoder.layers.{i}.self_attn.qkv."),
    ("blip.visual_encoder.blocks.{i}.attn.proj.", "vision.encoder.layers.{i}.self_attn.projection."),
    ("blip.visual_encoder.blocks.{i}.norm2.", "vision.encoder.layers.{i}.layer_norm2."),
    ("blip.visual_encoder.blocks.{i}.mlp.", "vision.encoder.layers.{i}.mlp."),
    ("blip.visual_encoder.norm.", "vision.post_layernorm."),
    ("blip.text_encoder.", "text."),
    ("mlp.layers.", "head."),
)
#: released prefixes the score uses: any key under them that no rule maps is a mapping bug, not an extra head
_USED = ("blip.visual_encoder.", "blip.text_encoder.", "mlp.")


def _pattern(prefix: str) -> re.Pattern:
    return re.compile("^" + re.escape(prefix).replace(r"\{i\}", r"(?P<i>\d+)"))


_FORWARD = tuple((_pattern(src), dst) for src, dst in _RULES)
_INVERSE = tuple((_pattern(dst), src) for src, dst in _RULES)


def _rename(key: str, rules: tuple[tuple[re.Pattern, str], ...]) -> str | None:
    for pattern, target in rules:
        m = pattern.match(key)
        if m:
            return target.replace("{i}", m.groupdict().get("i") or "") + key[m.end():]
    return None


def released_to_modules(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released ``ImageReward.pt`` state dict -> :class:`ImageRewardModel` state dict."""
    out, unknown = {}, []
    for key, value in state.items():
        if not key.startswith(_USED) or key.endswith("position_ids"):  # contrastive projections, buffers
            continue
        new = _rename(key, _FORWARD)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        more = " ..." if len(unknown) > 8 else ""
        raise KeyError(f"unexpected keys in the ImageReward checkpoint: {unknown[:8]}{more}")
    return out


def modules_to_released(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`released_to_modules` (without the dropped entries): for tests and re-export."""
    out = {}
    for key, value in state.items():
        new = _rename(key, _INVERSE)
        if new is None:
            raise KeyError(f"no released name for module key {key!r}")
        out[new] = value
    return out
