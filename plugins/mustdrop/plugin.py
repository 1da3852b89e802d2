"""MustDrop (Liu et al., 2024): multi-stage vision-token dropping.

(a) a local spatial merge in the vision tower and a protected key set from CLS attention;
(b) dual-attention filtering guided by the text tokens at several decoder layers;
(c) an output-aware KV-cache policy in decoding. Each stage owns its part of the model, so
the stages compose with other methods on the stages MustDrop leaves free.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mmeff.adapters.vlm import VLMAdapter
from mmeff.errors import ConfigError, UnsupportedModelError
from mmeff.hooks import ModelHook
from mmeff.plugin import Plugin, PluginContext
from mmeff.registry import register_plugin
from mmeff.token_drop.budget import row_counts
from mmeff.token_drop.engine import DropEngine, SelectionInput
from mmeff.token_drop.merged_vision import MergedTokens, MergedVisionReducer
from mmeff.token_drop.scoring import attention_at_layer, topk_mask
from mmeff.token_drop.stats import drop_stats, query_scoring_flops
from mmeff.token_drop.vision import TokenState, VisionReducer, VisionStep
from mmeff.token_drop.vision_ops import cls_attention, local_window_merge

from .config import RELEASED_KEY_FRACTION, MustDropConfig
from .ops import dual_attention, joint_score, layer_average_schedule, threshold_keep

#: where the local merge (stage a) cannot run, and why; the decoder and cache stages run on every VLM adapter
MERGE_REFUSED = {
    "qwen2_vl": "the Qwen-VL vision tower has no CLS token, and its 2x2 patch merger needs the whole patch grid, so "
                "merging inside the tower has no released port to follow",
    "internvl": "the merge runs in InternViT, whose per-tile square patch grid the 2x2 pixel shuffle needs intact",
    "llava_onevision": "LLaVA-OneVision's SigLIP tower has no CLS token and its video frames are pooled 2x2 after the "
                       "projector, which would mix merged tokens' emptied grid slots",
    "gemma3": "Gemma 3's SigLIP tower has no CLS token and its patches are average-pooled 4x4 into the soft tokens "
              "after the tower",
}
#: where the key set (stage a's CLS-attention protection) has no signal or no patch-to-token map, and why
KEY_SET_REFUSED = {
    "llava_onevision": "LLaVA-OneVision's SigLIP tower has no CLS token to rank patches by",
    "gemma3": "Gemma 3's SigLIP tower has no CLS token, and its patches are average-pooled 4x4 into the soft tokens",
}

#: what ``mmeff list`` says of the adapters where stage (a) runs in part or not at all
NOTES = {
    key: "; ".join(part for part in (
        f"no local merge ({MERGE_REFUSED[key]})" if key in MERGE_REFUSED else "",
        f"no key set ({KEY_SET_REFUSED[key]})" if key in KEY_SET_REFUSED else "",
    ) if part)
    for key in ("qwen2_vl", "internvl", "llava_onevision", "gemma3")
}
NOTES["qwen2_vl"] += "; key set ranked by the attention each merged token's patches receive in the last ViT block"
NOTES["qwen3_vl"] = NOTES["qwen2_vl"]
NOTES["internvl"] += "; key set per tile, tokens ranked by their four pixel-shuffled patches' CLS attention"


@register_plugin
class MustDropPlugin(Plugin):
    name = "mustdrop"
    config_cls = MustDropConfig
    supports = ("llava", "llava_next", "qwen2_vl", "qwen3_vl", "internvl", "llava_onevision", "gemma3")
    notes = NOTES
    owns = ("vision", "prefill", "decode")
    description = ("MustDrop: local merge in the vision tower (LLaVA), dual-attention filter in prefill, "
                   "cache eviction")

    config: MustDropConfig

    def __init__(self, config: MustDropConfig) -> None:
        super().__init__(config)
        self.reducer: VisionReducer | MergedVisionReducer | None = None
        self.engine: DropEngine | None = None
        self.adapter: VLMAdapter | None = None
        self._keys: torch.Tensor | None = None  # (images, grid²) protected patches of the last call (LLaVA-1.5)
        self._token_keys: list[torch.Tensor] = []  # per tower call, protected merged tokens in LLM order (Qwen)
        self._slot_keys: torch.Tensor | None = None  # (B, L) key set over the prefill's original tokens
        self._schedule: dict[int, list[int]] = {}
        self._queries = 1.0  # text tokens after the image that scored the last drop (for FLOPs)
        self._merge_on = bool(config.merge)
        self._image_sizes: torch.Tensor | None = None  # LLaVA-NeXT: the last call's, to map the key set
        self._key_fraction = 0.0

    def boundaries(self, num_layers: int) -> tuple[int, ...]:
        """The engine's drop points: before the layer after each of ``layers`` (they run on the full set)."""
        return tuple(b + 1 for b in self.config.resolve_layers(num_layers))

    def owned_stages(self) -> tuple[str, ...]:
        cfg = self.config  # the merge is resolved per model in check(), which runs first
        return tuple(s for s, on in (("vision", self._merge_on), ("prefill", cfg.filter),
                                     ("decode", cfg.cache_policy)) if on)

    def ran_stages(self) -> list[str]:
        """What runs on this model: ``merge``, ``key_set``, ``filter``, ``cache_policy``."""
        cfg = self.config
        on = (self._merge_on, self._key_fraction > 0, cfg.filter, cfg.cache_policy)
        return [s for s, o in zip(("merge", "key_set", "filter", "cache_policy"), on) if o]

    def _resolve_stages(self, adapter: VLMAdapter) -> None:
        """Which of stage (a)'s parts this model can run: ``None`` options follow the model, explicit ones
        it cannot honour are refused with the reason."""
        cfg, key = self.config, adapter.key
        merge_reason = None if key in ("llava", "llava_next") else (
            MERGE_REFUSED.get(key) or adapter.vision_side_refusal or f"no local merge is built for {key} models")
        if cfg.merge and merge_reason:
            raise UnsupportedModelError(f"mustdrop merge=True on {key}: {merge_reason}; its decoder filter and cache "
                                        f"policy run there (merge=None or False)")
        self._merge_on = cfg.merge is not False and merge_reason is None
        key_reason = KEY_SET_REFUSED.get(key) if self._key_signal(adapter) is None else None
        if cfg.key_fraction and key_reason:
            raise UnsupportedModelError(f"mustdrop key_fraction={cfg.key_fraction} on {key}: {key_reason}; "
                                        f"use key_fraction=None or 0")
        wanted = RELEASED_KEY_FRACTION if cfg.key_fraction is None else cfg.key_fraction
        self._key_fraction = wanted if (cfg.filter and key_reason is None) else 0.0
        if not (self._merge_on or cfg.filter):
            raise ConfigError(f"mustdrop filter=False leaves no stage on {key}: {merge_reason}")

    @staticmethod
    def _key_signal(adapter: VLMAdapter) -> str | None:
        """What ranks the key set: the ViT's CLS attention (LLaVA-1.5), or the attention each merged token's
        patches receive (Qwen-VL towers, the signal VisionZip's Qwen release ranks by)."""
        if adapter.key in ("llava", "llava_next"):
            return "cls"
        if adapter.key == "internvl":
            return "cls_tokens"  # each token's four pixel-shuffled patches, per tile
        return "received" if adapter.vision_signal == "received" else None

    def check(self, ctx: PluginContext) -> None:
        adapter = ctx.adapter
        assert isinstance(adapter, VLMAdapter)
        self._resolve_stages(adapter)
        if self._merge_on and self.config.merge_layer > (feature_idx := adapter.feature_layer_index()):
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
        keyed = self._key_fraction > 0
        if keyed and self._key_signal(adapter) == "received":
            self.reducer = MergedVisionReducer(f"{self.name}:vision", observe=self._merged_key_set)
            self.reducer.attach(ctx)
        elif keyed and self._key_signal(adapter) == "cls_tokens":
            ctx.add_hook(adapter.internvit_layers[-1], "key_set", _TileKeysHook(self))
        else:
            steps: dict[int, list] = {}
            if self._merge_on:
                steps.setdefault(cfg.merge_layer, []).append(self._merge)
            if keyed:  # as released: the last ViT layer's CLS attention
                steps.setdefault(len(adapter.vision_layers) - 1, []).append(self._key_set)
            transforms = {layer: _chain(fns) for layer, fns in steps.items()}
            if keyed and adapter.key == "llava_next":
                ctx.add_hook(adapter.model.model, "image_sizes", _ImageSizesHook(self))
            if transforms:
                self.reducer = VisionReducer(f"{self.name}:vision", transforms, reduces=self._merge_on,
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
        self._keys, self._token_keys, self._slot_keys, self._image_sizes = None, [], None, None
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
        counts = row_counts(alive.sum(1), self._key_count)
        chosen = topk_mask(cls, alive, counts)
        keys = torch.zeros(st.x.shape[0], self.adapter.patch_grid ** 2, dtype=torch.bool, device=cls.device)
        src = st.sources[:, 1:]
        keys.scatter_(1, torch.where(chosen, src, 0), chosen)  # non-chosen write False onto slot 0 ...
        keys[:, 0] |= (chosen & (src == 0)).any(1)  # ... so put back a chosen slot 0
        self._keys = keys
        return st

    def _key_count(self, tokens: int) -> int:
        return math.ceil(self._key_fraction * tokens)

    def _merged_key_set(self, items: list[MergedTokens]) -> None:
        """Qwen-VL towers: per image (or video) of one tower call, the top ``key_fraction`` of its merged tokens
        by the attention their patches receive in the last block, in the LLM's order; nothing is dropped."""
        call = []
        for item in items:
            keys = torch.zeros(item.scores.shape[0], dtype=torch.bool, device=item.scores.device)
            keys[item.scores.topk(self._key_count(keys.shape[0])).indices] = True
            call.append(keys)
        self._token_keys.append(torch.cat(call))

    def _original_key_slots(self) -> torch.Tensor | None:
        """(B, L) key set over the prefill's original tokens, or None where no map exists."""
        original = self.engine.state.layouts[0]
        image = original.image & original.valid
        if self._keys is not None:  # (crops, grid²) from the CLS attention of each crop the tower saw
            flat = self._keys.flatten()
            if self.adapter.key == "llava_next":  # base crop + unpadded tiles + newlines, per image
                if self._image_sizes is None:
                    return None
                where = torch.cat(self.adapter.patch_positions(self._image_sizes)).to(flat.device)
                flat = flat[where.clamp(min=0)] & (where >= 0)
            if int(image.sum()) != flat.numel():
                return None
            out = torch.zeros_like(image)
            out[image] = flat.to(image.device)
            return out
        if not self._token_keys:
            return None
        if self.adapter.key == "internvl":  # one key tensor per tower call, tiles in scatter order
            flat = torch.cat(self._token_keys).to(image.device)
            if int(image.sum()) != flat.numel():
                return None
            out = torch.zeros_like(image)
            out[image] = flat
            return out
        # Qwen-VL: the model scatters image features, then video features, in row-major token order
        ids = self.engine.state.prompt_ids
        kinds = [(ids == t) for t in (self.adapter.image_token_id, self.adapter.video_token_id) if (ids == t).any()]
        if len(kinds) != len(self._token_keys):
            return None
        out = torch.zeros_like(image)
        for where, keys in zip(kinds, self._token_keys):
            if int(where.sum()) != keys.numel():
                return None
            out[where] = keys.to(out.device)
        return out

    def _key_slots(self, inp: SelectionInput) -> torch.Tensor:
        """Key-set membership of each slot of the current layout."""
        layout = inp.layout
        if inp.stage == 1:
            self._slot_keys = self._original_key_slots()
        if self._slot_keys is None or self._slot_keys.shape[0] != layout.idx.shape[0]:
            return torch.zeros_like(layout.image)
        return self._slot_keys.gather(1, layout.idx) & layout.image & layout.valid

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
        out = {"layers": [b - 1 for b in mine], "stages": list(self.owned_stages()), "ran": self.ran_stages(),
               **drop_stats(self.engine, scoring_flops=scoring)}
        keys = self._slot_keys
        out["key_set_tokens"] = keys.sum(-1).tolist() if keys is not None else []
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


class _ImageSizesHook(ModelHook):
    """LLaVA-NeXT: keeps the call's ``image_sizes``, which say how its crops are packed into tokens."""

    def __init__(self, plugin: MustDropPlugin) -> None:
        self.plugin = plugin

    def pre_forward(self, module, args, kwargs):
        if kwargs.get("pixel_values") is not None:
            self.plugin._image_sizes = kwargs.get("image_sizes")
        return args, kwargs


class _TileKeysHook(ModelHook):
    """InternVL: at the last InternViT layer's input, each tile's top ``key_fraction`` of image tokens by
    their four patches' CLS attention (the pixel shuffle's map), in the order the model scatters them."""

    def __init__(self, plugin: MustDropPlugin) -> None:
        self.plugin = plugin

    def pre_forward(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        plugin = self.plugin
        share = plugin.adapter.token_cls_share(hidden)  # (tiles, tokens per tile)
        keys = torch.zeros_like(share, dtype=torch.bool)
        keys.scatter_(1, share.topk(plugin._key_count(share.shape[1]), dim=-1).indices, True)
        plugin._token_keys.append(keys.flatten())
        return args, kwargs
