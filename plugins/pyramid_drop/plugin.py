"""PyramidDrop (Xing et al., CVPR'25): rank image tokens by the last instruction token's
attention at stage boundaries and keep a shrinking fraction, so deeper layers see fewer.
"""

from __future__ import annotations

from typing import Any

import torch

from mmeff.adapters.vlm import VLMAdapter
from mmeff.flops import decoder_layer_flops, decoder_prefill_flops
from mmeff.plugin import Plugin, PluginContext
from mmeff.registry import register_plugin
from mmeff.token_drop.engine import DropEngine, SelectionInput

from .config import PyramidDropConfig
from .ops import last_query_attention, stage_keep_counts, topk_mask


@register_plugin
class PyramidDropPlugin(Plugin):
    name = "pyramid_drop"
    config_cls = PyramidDropConfig
    supports = ("llava", "llava_next")
    changes_seq_len = True
    description = "PyramidDrop: staged image-token dropping ranked by last-instruction-token attention"

    config: PyramidDropConfig

    def __init__(self, config: PyramidDropConfig) -> None:
        super().__init__(config)
        self.engine: DropEngine | None = None
        self.adapter: VLMAdapter | None = None

    def check(self, ctx: PluginContext) -> None:
        assert isinstance(ctx.adapter, VLMAdapter)
        DropEngine.check(ctx.adapter, self.config.resolve_layers(ctx.adapter.num_layers), self.name)

    def attach(self, ctx: PluginContext) -> None:
        self.adapter = ctx.adapter
        layers = self.config.resolve_layers(ctx.adapter.num_layers)
        self.engine = DropEngine(self._select, layers, position_mode="compact")
        self.engine.attach(ctx)

    def detach(self, ctx: PluginContext) -> None:
        super().detach(ctx)
        self.engine = None

    def reset(self) -> None:
        if self.engine is not None:
            self.engine.reset()

    def _select(self, inp: SelectionInput) -> torch.Tensor:
        parts = self.adapter.qk_parts(inp.layer_idx)
        cos, sin = inp.cos_sin
        scores = last_query_attention(
            inp.hidden,
            norm=parts.norm,
            q_proj=parts.q_proj,
            k_proj=parts.k_proj,
            num_heads=parts.num_heads,
            num_kv_heads=parts.num_kv_heads,
            head_dim=parts.head_dim,
            apply_rotary=parts.apply_rotary,
            cos=cos,
            sin=sin,
            query_slot=inp.query_slot,
            key_valid=inp.layout.key_valid,
        )
        counts = stage_keep_counts(inp.original_image_counts, self.config.ratio, inp.stage)
        return topk_mask(scores, inp.layout.image & inp.layout.valid, counts)

    def stats(self) -> dict[str, Any]:
        if self.engine is None or self.adapter is None:
            return {}
        layouts = self.engine.layer_layouts(self.adapter.num_layers)
        if layouts is None:
            return {}
        image = torch.stack([lay.image_counts for lay in layouts]).float()  # (layers, B)
        tokens = torch.stack([lay.key_valid.sum(-1) for lay in layouts]).float()
        cfg = self.adapter.text_config
        baseline = decoder_prefill_flops([float(tokens[0].mean())] * len(layouts), cfg)
        scoring = sum(
            2 * float(tokens[b].mean()) * cfg.hidden_size * 2 * cfg.hidden_size for b in self.engine.boundaries
        )
        reduced = decoder_prefill_flops(tokens.mean(1).tolist(), cfg) + scoring
        before = image[0]
        return {
            "layers": list(self.engine.boundaries),
            "ratio": self.config.ratio,
            "image_tokens_before": before.tolist(),
            "image_tokens_per_layer": image.mean(1).tolist(),
            "image_tokens_per_layer_by_row": image.t().long().tolist(),
            "mean_image_tokens": float(image.mean()),
            "final_image_tokens": float(image[-1].mean()),
            "retained_fraction": float(image.mean() / before.mean().clamp(min=1)),
            "kv_cache_tokens_per_layer": tokens.mean(1).tolist(),
            "prefill_flops_ratio": reduced / baseline if baseline else 1.0,
            "one_layer_flops_at_full_length": decoder_layer_flops(float(tokens[0].mean()), cfg),
        }
