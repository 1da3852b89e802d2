"""timm Vision Transformers (``timm.create_model("vit_base_patch16_224")`` and kin): the ToMe paper's own setting.

``mmeff.wrap(vit)`` gives a pipeline that is called like the model (``pipe(images)``); plugins
hook the blocks. Only the plain ViT layout is adapted: patch tokens after at most one prefix
(CLS) token, blocks with ``norm1 / attn(qkv) / norm2 / mlp``.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..registry import register_adapter
from .base import Adapter


@register_adapter
class TimmViTAdapter(Adapter):
    key = "timm_vit"
    family = "vision"
    description = "timm VisionTransformer (ViT, DeiT, ...): image classification / features"

    @classmethod
    def matches(cls, obj: Any) -> bool:
        return any(c.__name__ == "VisionTransformer" and c.__module__.startswith("timm.") for c in type(obj).__mro__)

    def hook_roots(self) -> list[nn.Module]:
        return [self.obj]

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.obj.blocks)

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches: 1 for a CLS token, 2 with DeiT's distillation token, + registers."""
        return int(getattr(self.obj, "num_prefix_tokens", 1))

    @property
    def patch_tokens(self) -> int:
        return int(self.obj.patch_embed.num_patches)

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.key, "blocks": len(self.blocks), "patch_tokens": self.patch_tokens,
                "prefix_tokens": self.prefix_tokens}
