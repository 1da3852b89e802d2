"""MustDrop (Liu et al., 2024): multi-stage vision-token dropping.

(a) a local spatial merge in the vision tower and a protected key set from CLS attention;
(b) dual-attention filtering guided by the text tokens at several decoder layers;
(c) an output-aware KV-cache policy in decoding. Each stage owns its part of the model, so
the stages compose with other methods on the stages MustDrop leaves free.
"""

from __future__ import annotations

from typing import Any

import torch

from mmeff.adapters.vlm import VLMAdapter
from mmeff.errors import ConfigError
from mmeff.plugin import Plugin, PluginContext
from mmeff.registry import register_plugin
from mmeff.token_drop.budget import row_counts
from mmeff.token_drop.engine import DropEngine, SelectionInput
from mmeff.token_drop.scoring import attention_at_layer, topk_mask
from mmeff.token_drop.stats import drop_stats, query_scoring_flops
from mmeff.token_drop.vision import TokenState, VisionReducer, VisionStep
from mmeff.token_drop.vision_ops import cls_attention, local_window_merge

from .config import MustDropConfig
from .ops import dual_attention, joint_score, layer_average_schedule, threshold_keep


@register_plugin
class MustDropPlugin(Plugin):
    name = "mustdrop"
    config_cls = MustDropConfig
    supports = ("llava", "llava_next")
    refused = {"qwen2_vl": "its local merge runs in the vision tower (no CLS token, 2x2 merger on Qwen2-VL) and "
                           "its key set needs a patch-to-position map not built for Qwen2-VL yet",
               "internvl": "its local merge runs in InternViT, whose per-tile square patch grid the 2x2 pixel "
                           "shuffle needs intact, and its CLS-attention key set needs a map from ViT patches to the "
                           "shuffled tokens of each tile and thumbnail; neither is built yet",
               "llava_onevision": "its local merge and key set rank by the ViT's CLS attention, and "
                                  "LLaVA-OneVision's SigLIP tower has no CLS token (video frames are also pooled "
                                  "2x2 after the projector); not built yet"}
    owns = ("vision", "prefill", "decode")
    description = "MustDrop: local merge in the vision tower, dual-attention filter in prefill, cache eviction"

    config: MustDropConfig

    def __init__(self, config: MustDropConfig) -> None:
        super().__init__(config)
        self.reducer: VisionReducer | None = None
        self.engine: DropEngine | None = None
        self.adapter: VLMAdapter | None = None
        self._keys: torch.Tensor | None = None  # (images, grid²) protected patches of the last call
        self._schedule: dict[int, list[int]] = {}
        self._queries = 1.0  # text tokens after the image that scored the last drop (for FLOPs)

    def boundaries(self, num_layers: int) -> tuple[int, ...]:
        """The engine's drop points: before the layer after each of ``layers`` (they run on the full set)."""
        return tuple(b + 1 for b in self.config.resolve_layers(num_layers))

    def owned_stages(self) -> tuple[str, ...]:
        cfg = self.config
        return tuple(s for s, on in (("vision", cfg.merge), ("prefill", cfg.filter), ("decode", cfg.cache_policy))
                     if on)

    def check(self, ctx: PluginContext) -> None:
        adapter = ctx.adapter
        assert isinstance(adapter, VLMAdapter)
        feature_idx = adapter.feature_layer_index()
        if self.config.merge and self.config.merge_layer > feature_idx:
            raise ConfigError(
                f"mustdrop merge_layer must not come after the feature layer {feature_idx} of this vision tower; "
                f"allowed: 0..{feature_idx}, got {self.config.merge_layer}"
            )
        if self.config.filter:
            layers = self.config.resolve_layers(adapter.num_layers)
            last = adapter.num_layers - 2
            bad = [b for b in layers if not 1 <= b <= last]
            if bad:
                raise ConfigError(f"mustdrop layers {bad} are out of range: its drop follows each listed decoder "
                                  f"layer, so a {adapter.num_layers}-layer decoder allows 1..{last}")
            DropEngine.check(adapter, self.boundaries(adapter.num_layers), self.name)
            adapter.check_attention_scoring(layers)  # its filter ranks by the layer's own attention rows

    def attach(self, ctx: PluginContext) -> None:
        adapter = ctx.adapter
        self.adapter = adapter
        cfg = self.config
        steps: dict[int, list] = {}
        if cfg.merge:
            steps.setdefault(cfg.merge_layer, []).append(self._merge)
        if cfg.filter and cfg.key_fraction > 0:  # as released: the last ViT layer's CLS attention
            steps.setdefault(len(adapter.vision_layers) - 1, []).append(self._key_set)
        transforms = {layer: _chain(fns) for layer, fns in steps.items()}
        if transforms:
            self.reducer = VisionReducer(f"{self.name}:vision", transforms, reduces=cfg.merge,
                                         proportional_attention=cfg.proportional_attention)
            self.reducer.attach(ctx)
        self.engine = DropEngine.shared(adapter)
        if cfg.filter:
            # as released: layers 2, 6, 10, 14 run on the full set and the drop follows them (before 3, 7, ...)
            boundaries = self.boundaries(adapter.num_layers)
            self.engine.add_stages(self.name, boundaries, self._select)
        if cfg.cache_policy:
            self.engine.set_evict(self.name)

    def detach(self, ctx: PluginContext) -> None:
        super().detach(ctx)
        if self.reducer is not None:
            self.reducer.detach()
        if self.engine is not None:
            self.engine.remove_owner(self.name)
        self.reducer = self.engine = None

    def reset(self) -> None:
        self._keys = None
        self._schedule = {}
        if self.reducer is not None:
            self.reducer.reset()
        if self.engine is not None:
            self.engine.reset()

    # -- stage (a): in the vision tower --------------------------------------------------
    def _merge(self, step: VisionStep) -> TokenState:
        st = step.state
        x, sizes = local_window_merge(st.x, st.sizes, self.adapter.patch_grid, self.config.merge_threshold)
        return TokenState(x, sizes, st.sources)

    def _key_set(self, step: VisionStep) -> TokenState:
        st = step.state
        attn = step.layer.self_attn
        x_norm = step.layer.layer_norm1(step.layer_input)
        cls = cls_attention(x_norm, attn.q_proj, attn.k_proj, attn.num_heads, st.sizes)[:, 1:]
        alive = st.sizes[:, 1:] > 0
        counts = row_counts(alive.sum(1), self.config.key_count)
        chosen = topk_mask(cls, alive, counts)
        keys = torch.zeros(st.x.shape[0], self.adapter.patch_grid ** 2, dtype=torch.bool, device=cls.device)
        src = st.sources[:, 1:]
        keys.scatter_(1, torch.where(chosen, src, 0), chosen)  # non-chosen write False onto slot 0 ...
        keys[:, 0] |= (chosen & (src == 0)).any(1)  # ... so put back a chosen slot 0
        self._keys = keys
        return st

    def _key_slots(self, inp: SelectionInput) -> torch.Tensor:
        """Key-set membership of each slot of the current layout (LLaVA-1.5: one grid run per row)."""
        layout = inp.layout
        none = torch.zeros_like(layout.image)
        keys = self._keys
        original = self.engine.state.layouts[0]
        n_grid = self.adapter.patch_grid ** 2
        if keys is None or keys.shape[0] != layout.idx.shape[0] or bool((original.image_counts != n_grid).any()):
            return none  # LLaVA-NeXT tiles: the grid runs are packed and unpadded, no one-to-one map
        start = original.image.long().argmax(-1)
        grid = (layout.idx - start[:, None]).clamp(0, n_grid - 1)
        return keys.gather(1, grid) & layout.image & layout.valid

    # -- stage (b): in the decoder -------------------------------------------------------
    def _select(self, inp: SelectionInput) -> torch.Tensor:
        cfg = self.config
        layout = inp.layout
        image = layout.image & layout.valid
        queries, weight = _text_after_image(layout, inp.query_slot)
        self._queries = float(weight.sum(-1).float().mean())
        hidden, cos_sin = inp.prev_input  # the attention of the layer the drop follows
        attn = attention_at_layer(self.adapter, inp.layer_idx - 1, hidden, cos_sin, queries, layout.key_valid,
                                  layout.idx)
        share, peak = dual_attention(attn, weight, image)
        keys = self._key_slots(inp)
        if cfg._budget is None:
            return threshold_keep(share, peak, image, keys, cfg.global_threshold, cfg.individual_threshold)
        counts = self._stage_counts(inp, keys)
        score = joint_score(share, peak, cfg.global_threshold, cfg.individual_threshold)
        return topk_mask(score.masked_fill(keys, float("inf")), image, counts)

    def _stage_counts(self, inp: SelectionInput, keys: torch.Tensor) -> torch.Tensor:
        if inp.stage == 1:  # a new prefill: direct model() calls get no pipeline reset between them
            self._schedule = {}
        if not self._schedule:
            before = self.engine.state.layouts[0].image_counts.tolist()
            entering = inp.original_image_counts.tolist()
            floors = keys.sum(-1).tolist()
            boundaries = self.boundaries(self.adapter.num_layers)
            for b, (n0, n_in, floor) in enumerate(zip(before, entering, floors)):
                self._schedule[b] = layer_average_schedule(
                    n0, n_in, boundaries, self.adapter.num_layers, self.config._budget * n0, floor
                )
        return torch.tensor([self._schedule[b][inp.stage - 1] for b in range(len(self._schedule))])

    def stats(self) -> dict[str, Any]:
        if self.engine is None or self.adapter is None:
            return {}
        layouts = self.engine.layer_layouts()
        if layouts is None:
            return {}
        mine = [s.boundary for s in self.engine.stages if s.owner == self.name]
        hidden = self.adapter.text_config.hidden_size
        queries = round(self._queries)
        scoring = sum(query_scoring_flops(float(layouts[b - 1].key_valid.sum(-1).float().mean()), hidden,
                                          queries=queries) for b in mine)
        out = {"layers": [b - 1 for b in mine], "stages": list(self.owned_stages()),
               **drop_stats(self.engine, scoring_flops=scoring)}
        out["key_set_tokens"] = self._keys.sum(-1).tolist() if self._keys is not None else []
        return out


def _chain(fns: list) -> Any:
    """Run several transforms after the same vision layer, each on the previous one's state."""
    def run(step: VisionStep) -> TokenState:
        for fn in fns:
            step = VisionStep(step.layer_idx, step.layer, step.layer_input, fn(step))
        return step.state
    return run


def _text_after_image(layout, query_slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots (B, Q) of the valid text tokens after each row's last image token, up to the prompt's
    last token, left padded with the query slot itself (weight 0)."""
    image = layout.image & layout.valid
    slots = torch.arange(layout.idx.shape[1], device=layout.idx.device)[None]
    last_image = torch.where(image, slots, -1).amax(-1, keepdim=True)
    text = layout.key_valid & ~layout.image & (slots > last_image) & (slots <= query_slot[:, None])
    counts = text.sum(-1)
    width = max(int(counts.max()), 1)
    order = torch.sort(text.to(torch.int8), dim=1, stable=True).indices[:, -width:]
    weight = torch.gather(text, 1, order)
    queries = torch.where(weight, order, query_slot[:, None].expand_as(order))
    return queries, weight
