"""Base classes for token-reduction plugins: the engine wiring every method shares, so a
method is its config, its keep rule and its stats."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..adapters.vlm import VLMAdapter
from ..plugin import Plugin, PluginContext
from .engine import DropEngine, PositionMode, SelectionInput
from .merged_vision import MergedVisionReducer
from .stats import drop_stats
from .vision import Transform, VisionReducer


class DecoderDropPlugin(Plugin):
    """A method that drops image tokens between decoder layers (the *prefill* stage)."""

    supports = ("llava", "llava_next", "qwen2_vl", "qwen3_vl", "internvl", "llava_onevision", "gemma3")
    owns = ("prefill",)
    position_mode: ClassVar[PositionMode] = "compact"
    lowest_layer: ClassVar[int] = 1
    #: ranks tokens by recomputed attention rows at these offsets from each boundary (FastV: -1)
    scoring_offsets: ClassVar[tuple[int, ...]] = (0,)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.engine: DropEngine | None = None
        self.adapter: VLMAdapter | None = None

    def boundaries(self, adapter: VLMAdapter) -> tuple[int, ...]:
        """Decoder layers before which this method drops tokens."""
        raise NotImplementedError

    def select(self, inp: SelectionInput) -> torch.Tensor:
        """(B, L) bool: the image slots to keep at this boundary."""
        raise NotImplementedError

    def check(self, ctx: PluginContext) -> None:
        assert isinstance(ctx.adapter, VLMAdapter)
        boundaries = self.boundaries(ctx.adapter)
        DropEngine.check(ctx.adapter, boundaries, self.name, lowest=self.lowest_layer)
        ctx.adapter.check_attention_scoring(sorted({b + o for b in boundaries for o in self.scoring_offsets}))

    def attach(self, ctx: PluginContext) -> None:
        self.adapter = ctx.adapter
        self.engine = DropEngine.shared(ctx.adapter)
        self.engine.add_stages(self.name, self.boundaries(ctx.adapter), self.select, position_mode=self.position_mode)

    def detach(self, ctx: PluginContext) -> None:
        super().detach(ctx)
        if self.engine is not None:
            self.engine.remove_owner(self.name)
        self.engine = None

    def reset(self) -> None:
        if self.engine is not None:
            self.engine.reset()

    def scoring_flops(self) -> float:
        """The method's own ranking cost in the last prefill (added to its FLOPs ratio)."""
        return 0.0

    def stats(self) -> dict[str, Any]:
        if self.engine is None or self.engine.layer_layouts() is None:
            return {}
        mine = [s.boundary for s in self.engine.stages if s.owner == self.name]
        return {"layers": mine, **drop_stats(self.engine, scoring_flops=self.scoring_flops())}


class VisionDropPlugin(Plugin):
    """A method that merges or chooses tokens inside the vision tower (the *vision* stage)."""

    supports = ("llava", "llava_next")
    owns = ("vision",)
    refused = {"internvl": "InternViT has a CLS token, but each image token is a 2x2 block of patches concatenated "
                           "by the pixel shuffle, which needs every tile's full square patch grid; selecting or "
                           "merging whole 2x2 blocks (per tile and thumbnail) is not built yet",
               "llava_onevision": "LLaVA-OneVision's SigLIP tower has no CLS token (every last-layer patch is a "
                                  "feature), so there is no CLS attention to rank by, and video frames are pooled "
                                  "2x2 after the projector; not built yet"}
    proportional_attention: bool = True

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.reducer: VisionReducer | MergedVisionReducer | None = None

    def transforms(self, adapter: VLMAdapter) -> dict[int, Transform]:
        """Vision layer index -> what to do to the tokens after that layer."""
        raise NotImplementedError

    def check(self, ctx: PluginContext) -> None:
        assert isinstance(ctx.adapter, VLMAdapter)
        if ctx.adapter.vision_signal == "cls":
            ctx.adapter.feature_layer_index()
        DropEngine.check(ctx.adapter, (), self.name)

    def make_reducer(self, adapter: VLMAdapter) -> VisionReducer | MergedVisionReducer:
        """The hooks for this tower: ViT-layer transforms on CLS towers (subclasses with a merged-token
        selection, VisionZip, override this for Qwen-VL's)."""
        return VisionReducer(self.name, self.transforms(adapter), proportional_attention=self.proportional_attention)

    def attach(self, ctx: PluginContext) -> None:
        self.reducer = self.make_reducer(ctx.adapter)
        self.reducer.attach(ctx)

    def detach(self, ctx: PluginContext) -> None:
        super().detach(ctx)
        if self.reducer is not None:
            self.reducer.detach()
        self.reducer = None

    def reset(self) -> None:
        if self.reducer is not None:
            self.reducer.reset()
            if self.reducer.engine is not None:
                self.reducer.engine.reset()

    def stats(self) -> dict[str, Any]:
        if self.reducer is None or self.reducer.engine is None:
            return {}
        return drop_stats(self.reducer.engine)
