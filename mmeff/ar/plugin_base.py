"""Base of the plugins that take over the image-token decode loop (SJD, LANTERN, ZipAR).

They attach no hook: ``MMPipeline.generate_images`` hands the decode session to the one
plugin owning the ``image_decode_loop`` stage, so two such plugins are refused at
``add_plugin`` and removing the plugin restores plain decoding by construction.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..plugin import Plugin, PluginContext
from .sampling import SamplingConfig
from .session import DecodeSession

AR_ADAPTERS = ("janus", "ar_image")


class DecodeLoopPlugin(Plugin):
    supports: ClassVar[tuple[str, ...]] = AR_ADAPTERS
    owns: ClassVar[tuple[str, ...]] = ("image_decode_loop",)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._stats: dict[str, Any] = {}

    def attach(self, ctx: PluginContext) -> None:
        self._stats = {}

    def detach(self, ctx: PluginContext) -> None:
        ctx.remove_hooks()

    def reset(self) -> None:
        self._stats = {}

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def decode(self, session: DecodeSession, sampling: SamplingConfig, generator: torch.Generator | None
               ) -> torch.Tensor:
        raise NotImplementedError
