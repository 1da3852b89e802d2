"""Adapters: everything that differs between model families lives here, never in plugins."""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn as nn


class Adapter:
    """Binds a loaded model (or diffusers pipeline) to the parts plugins need."""

    key: ClassVar[str]
    #: "vlm" (image+text -> text) or "t2i" (text -> image)
    family: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, obj: Any, processor: Any = None) -> None:
        self.obj = obj
        self.processor = processor

    @classmethod
    def matches(cls, obj: Any) -> bool:
        raise NotImplementedError

    def hook_roots(self) -> list[nn.Module]:
        """The modules under which plugins may attach hooks (used to find and remove them)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """A few facts worth printing (layers, image tokens, latent shape, ...)."""
        return {"adapter": self.key}
