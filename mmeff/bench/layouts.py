"""Random-weight models with a real checkpoint's *token layout*, for speed benchmarks.

Speed depends on sequence lengths and layer counts far more than on trained weights, so
a model with a released checkpoint's decoder depth, head layout and image-token count (and a
smaller hidden size) measures the relative cost of token reduction on a CPU. Two layouts:
LLaVA-1.5-7B (32 layers, 576 image tokens, ~40 text tokens) and Qwen2.5-VL-7B (28 layers,
28 query / 4 key-value heads, M-RoPE, a 1008 x 1008 image -> 1296 image tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

LLAVA_15_7B_TEXT = LlamaConfig(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32
)
QWEN25_VL_7B_TEXT = LlamaConfig(  # the released text config's sizes (FLOPs and KV-cache arithmetic only)
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4
)
REFERENCE_TEXT: dict[str, PretrainedConfig] = {"llava-1.5-7b": LLAVA_15_7B_TEXT, "qwen2.5-vl-7b": QWEN25_VL_7B_TEXT}


@dataclass(frozen=True)
class SpeedLayout:
    layers: int = 32
    hidden: int = 512
    heads: int = 8
    image_size: int = 336
    patch_size: int = 14  # 24 x 24 = 576 image tokens
    text_before: int = 5  # "<s> USER :" ... before the image
    text_after: int = 35  # the question and "ASSISTANT:"
    vocab: int = 1024
    image_token_id: int = 3
    kv_heads: int | None = None  # None: as many as query heads
    arch: str = "llava"  # "llava" or "qwen2_5_vl"
    reference: str = "llava-1.5-7b"  # the released checkpoint whose layout this is (REFERENCE_TEXT)
    merge: int = 1  # vision patches merged per side into one image token (Qwen: 2)

    @property
    def image_tokens(self) -> int:
        return (self.image_size // (self.patch_size * self.merge)) ** 2

    @property
    def reference_text(self) -> PretrainedConfig:
        return REFERENCE_TEXT[self.reference]


LAYOUTS: dict[str, SpeedLayout] = {
    "llava-1.5-7b": SpeedLayout(),
    # hidden 448 keeps 28 heads (head_dim 16; M-RoPE sections 2/3/3 as 16/24/24 of 128); the template
    # "<|im_start|>system ... <|im_start|>user\n<|vision_start|>" before, question + assistant turn after
    "qwen2.5-vl-7b": SpeedLayout(layers=28, hidden=448, heads=28, kv_heads=4, image_size=1008, patch_size=14,
                                 merge=2, text_before=20, text_after=24, arch="qwen2_5_vl", reference="qwen2.5-vl-7b"),
}


def build_speed_model(layout: SpeedLayout, attn_implementation: str = "sdpa", seed: int = 0):
    """A random model with the layout's shape, plus one prompt's inputs (batch 1)."""
    if layout.arch == "qwen2_5_vl":
        return _build_qwen(layout, attn_implementation, seed)
    if layout.arch != "llava":
        raise ValueError(f"unknown layout arch {layout.arch!r}; known: 'llava', 'qwen2_5_vl'")
    vision = CLIPVisionConfig(
        image_size=layout.image_size, patch_size=layout.patch_size, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2,
    )
    text = LlamaConfig(
        vocab_size=layout.vocab, hidden_size=layout.hidden, intermediate_size=int(layout.hidden * 2.6875),
        num_hidden_layers=layout.layers, num_attention_heads=layout.heads,
        num_key_value_heads=layout.kv_heads or layout.heads,
        max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=layout.image_token_id,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    g = torch.Generator().manual_seed(seed)
    input_ids = _prompt(layout, g, [1], [])
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(1, 3, layout.image_size, layout.image_size, generator=g),
    }
    return model, inputs


def _prompt(layout: SpeedLayout, g: torch.Generator, head: list[int], around: list[int]) -> torch.Tensor:
    """``head + text_before + [around[0]] + image tokens + [around[1]] + text_after`` as a (1, L) batch."""
    before = torch.randint(10, layout.vocab, (layout.text_before,), generator=g)
    after = torch.randint(10, layout.vocab, (layout.text_after,), generator=g)
    image = torch.full((layout.image_tokens,), layout.image_token_id)
    parts = [torch.tensor(head, dtype=torch.long), before, torch.tensor(around[:1], dtype=torch.long), image,
             torch.tensor(around[1:], dtype=torch.long), after]
    return torch.cat(parts)[None]


def _build_qwen(layout: SpeedLayout, attn_implementation: str, seed: int):
    """Qwen2.5-VL: a 2-block windowed ViT of width 64 (its cost is part of every prefill), the
    layout's decoder with M-RoPE, and the processor's flattened-patch input format."""
    head_dim = layout.hidden // layout.heads
    if layout.hidden % layout.heads or head_dim % 16:
        raise ValueError(f"the Qwen2.5-VL layout needs a hidden size that is {layout.heads} heads x a multiple of 16 "
                         f"(M-RoPE sections 2/16, 3/16, 3/16 of the head size); got hidden {layout.hidden}")
    sections = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    vision_start, vision_end, video = 4, 5, 6
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=layout.patch_size,
                           spatial_merge_size=layout.merge, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1], out_hidden_size=layout.hidden),
        text_config=dict(vocab_size=layout.vocab, hidden_size=layout.hidden,
                         intermediate_size=int(layout.hidden * 18944 / 3584), num_hidden_layers=layout.layers,
                         num_attention_heads=layout.heads, num_key_value_heads=layout.kv_heads or layout.heads,
                         max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                                        "mrope_section": sections},
                         pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_id=layout.image_token_id, video_token_id=video, vision_start_token_id=vision_start,
        vision_end_token_id=vision_end,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    g = torch.Generator().manual_seed(seed)
    input_ids = _prompt(layout, g, [], [vision_start, vision_end])
    side = layout.image_size // layout.patch_size
    patch_dim = 3 * 2 * layout.patch_size**2
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(side * side, patch_dim, generator=g),
        "image_grid_thw": torch.tensor([[1, side, side]]),
        "mm_token_type_ids": (input_ids == layout.image_token_id).int(),
    }
    return model, inputs
