"""ToMe (Bolya et al., ICLR'23) in the vision tower: after each ViT layer up to LLaVA's feature
layer, merge the most similar tokens (bipartite soft matching on the layer's keys) by a
size-weighted mean; later layers use proportional attention. Fewer tokens reach the decoder
and the tower itself gets cheaper."""

from __future__ import annotations

from typing import Any

from mmeff.adapters.vlm import VLMAdapter
from mmeff.plugin import PluginContext
from mmeff.registry import register_plugin
from mmeff.token_drop.plugin_base import VisionDropPlugin
from mmeff.token_drop.vision import TokenState, Transform, VisionStep
from mmeff.token_drop.vision_ops import bipartite_merge, head_mean_keys

from .config import ToMeConfig
from .timm import TimmToMe


@register_plugin
class ToMePlugin(VisionDropPlugin):
    name = "tome"
    config_cls = ToMeConfig
    refused = {"qwen2_vl": "merged tokens would need grid positions for Qwen2-VL's 2-D vision RoPE, its windows (2.5) "
                           "and its 2x2 patch merger; not built yet",
               "internvl": "merged tokens would break the square per-tile patch grid InternVL's 2x2 pixel shuffle "
                           "reshapes (each image token is four concatenated patches; the CLS token alone is not "
                           "enough); merging whole 2x2 blocks is not built yet",
               "llava_onevision": "SigLIP has no CLS token (all last-layer patches are features), but the vision-side "
                                  "reducer keeps slot 0 as LLaVA's CLS token; and video frames are 2x2-pooled after "
                                  "the projector, which would mix merged tokens' emptied grid slots; not built yet"}
    supports = ("llava", "llava_next", "timm_vit")
    description = "ToMe: bipartite soft matching merges similar tokens in every vision-tower layer (VLMs, timm ViTs)"

    config: ToMeConfig
    timm: TimmToMe | None = None

    # timm ViTs take their own path (plugins/tome/timm.py); VLM towers the vision-stage reducer
    def check(self, ctx: PluginContext) -> None:
        if ctx.adapter.key == "timm_vit":
            self.timm = TimmToMe(self.config)
            self.timm.check(ctx)
        else:
            super().check(ctx)

    def attach(self, ctx: PluginContext) -> None:
        if self.timm is not None:
            self.timm.attach(ctx)
        else:
            super().attach(ctx)

    def stats(self) -> dict[str, Any]:
        return self.timm.stats() if self.timm is not None else super().stats()

    def transforms(self, adapter: VLMAdapter) -> dict[int, Transform]:
        self.points = adapter.feature_layer_index() + 1
        self.proportional_attention = self.config.proportional_attention
        return {i: self._merge for i in range(self.points)}

    def _merge(self, step: VisionStep) -> TokenState:
        st = step.state
        if step.layer_idx == 0:
            self._patches = st.x.shape[1] - 1
        target = self.config.targets(self._patches, self.points)[step.layer_idx]
        attn = step.layer.self_attn
        keys = head_mean_keys(step.layer.layer_norm1(step.layer_input), attn.k_proj, attn.num_heads)
        x, sizes, sources = st.x, st.sizes, st.sources
        while x.shape[1] - 1 > target:  # rounds of at most half the tokens each
            before = x.shape[1]
            x, sizes, sources, keys = _merge_round(x, keys, sizes, sources, x.shape[1] - 1 - target)
            if x.shape[1] == before:
                break
        return TokenState(x, sizes, sources)


def _merge_round(x, keys, sizes, sources, r):
    """One bipartite round on states and keys together (keys merged size-weighted too)."""
    both = x.new_empty(*x.shape[:2], x.shape[-1] + keys.shape[-1])
    both[..., : x.shape[-1]] = x
    both[..., x.shape[-1] :] = keys.to(x.dtype)
    merged, sizes, sources = bipartite_merge(both, keys, sizes, sources, r)
    return merged[..., : x.shape[-1]], sizes, sources, merged[..., x.shape[-1] :]
