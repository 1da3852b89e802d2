"""VisionZip (Yang et al., CVPR'25): text-agnostic token selection at the feature layer of the
vision tower. The decoder never sees the other tokens, so it stays FlashAttention-friendly.

On LLaVA's CLIP tower it ranks patches by CLS attention at the feature layer; on Qwen2/2.5/3-VL,
which have no CLS token, by the attention each patch receives in the tower's last block,
selecting among the 2x2-merged tokens, as the authors' Qwen2.5-VL release does."""

from __future__ import annotations

import torch

from mmeff.adapters.vlm import VLMAdapter
from mmeff.registry import register_plugin
from mmeff.token_drop.merged_vision import MergedTokens, MergedVisionReducer
from mmeff.token_drop.plugin_base import VisionDropPlugin
from mmeff.token_drop.vision import TokenState, Transform, VisionReducer, VisionStep
from mmeff.token_drop.vision_ops import cls_attention, head_mean_keys, visionzip_merge, zip_tokens

from .config import VisionZipConfig


@register_plugin
class VisionZipPlugin(VisionDropPlugin):
    name = "visionzip"
    config_cls = VisionZipConfig
    supports = ("llava", "llava_next", "qwen2_vl", "qwen3_vl")
    description = "VisionZip: dominant (CLS-attention) + contextual (merged) tokens, chosen in the vision tower"

    config: VisionZipConfig

    def make_reducer(self, adapter: VLMAdapter) -> VisionReducer | MergedVisionReducer:
        if adapter.vision_signal == "received":
            return MergedVisionReducer(self.name, self._zip_merged)
        return VisionReducer(self.name, self.transforms(adapter), proportional_attention=self.proportional_attention,
                             keep_cls=self.config.cls_token)

    def _zip_merged(self, item: MergedTokens) -> tuple[torch.Tensor, torch.Tensor]:
        dominant, contextual = self.config.merged_counts(item.features.shape[0])
        x, where = zip_tokens(item.features[None], item.scores[None], item.keys[None], dominant, contextual)
        return x[0], where[0]

    def transforms(self, adapter: VLMAdapter) -> dict[int, Transform]:
        return {adapter.feature_layer_index(): self._zip}

    def _zip(self, step: VisionStep) -> TokenState:
        attn = step.layer.self_attn
        x_norm = step.layer.layer_norm1(step.layer_input)
        cls = cls_attention(x_norm, attn.q_proj, attn.k_proj, attn.num_heads, step.state.sizes)
        keys = head_mean_keys(x_norm, attn.k_proj, attn.num_heads)
        n = step.state.x.shape[1] - 1
        dominant, contextual = self.config.counts(n)
        if self.config.cls_token and dominant + contextual < n:
            dominant -= 1  # the CLS token takes one of the kept places, as released (CLS + 53 + 10 at "64")
        x, sources = visionzip_merge(step.state.x, cls, keys, step.state.sources, dominant, contextual)
        return TokenState(x, torch.ones(x.shape[:2], device=x.device), sources)

