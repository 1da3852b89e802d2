"""Random-weight models with a real checkpoint's *token layout*, for speed benchmarks.

Speed depends on sequence lengths and layer counts far more than on trained weights, so
a LLaVA-1.5-7B-shaped model (32 decoder layers, 576 image tokens, ~40 text tokens) with
a smaller hidden size measures the relative cost of token reduction on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

LLAVA_15_7B_TEXT = LlamaConfig(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32
)


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

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_speed_model(layout: SpeedLayout, attn_implementation: str = "sdpa", seed: int = 0):
    """A random LLaVA with the layout's shape, plus one prompt's inputs (batch 1)."""
    vision = CLIPVisionConfig(
        image_size=layout.image_size, patch_size=layout.patch_size, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2,
    )
    text = LlamaConfig(
        vocab_size=layout.vocab, hidden_size=layout.hidden, intermediate_size=int(layout.hidden * 2.6875),
        num_hidden_layers=layout.layers, num_attention_heads=layout.heads, num_key_value_heads=layout.heads,
        max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=layout.image_token_id,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    g = torch.Generator().manual_seed(seed)
    before = torch.randint(10, layout.vocab, (layout.text_before,), generator=g)
    after = torch.randint(10, layout.vocab, (layout.text_after,), generator=g)
    image = torch.full((layout.image_tokens,), layout.image_token_id)
    input_ids = torch.cat([torch.tensor([1]), before, image, after])[None]
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(1, 3, layout.image_size, layout.image_size, generator=g),
    }
    return model, inputs
