"""Tiny random-weight models built from configs with the real transformers classes.

Tests and the random-model demo use these; plugin authors reuse them. Everything is
seeded, offline, and builds in well under a second on a CPU.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
)

from .tokenizer import LLAVA_CHAT_TEMPLATE, word_tokenizer


def _text_config(vocab_size: int, *, layers: int, hidden: int, heads: int, kv_heads: int, **overrides) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=overrides.pop("intermediate_size", 2 * hidden),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=overrides.pop("max_position_embeddings", 4096),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **overrides,
    )


def _vision_config(image_size: int, patch_size: int, hidden: int = 32, layers: int = 2) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        projection_dim=hidden,
    )


def tiny_llava(
    *,
    layers: int = 4,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    image_size: int = 16,
    patch_size: int = 4,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    **text_overrides,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A LLaVA-1.5-shaped model: CLIP ViT + 2-layer MLP projector + Llama, with a processor.

    ``(image_size // patch_size) ** 2`` image tokens per image (16 by default).
    """
    tokenizer = word_tokenizer()
    config = LlavaConfig(
        vision_config=_vision_config(image_size, patch_size),
        text_config=_text_config(len(tokenizer), layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                                 **text_overrides),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return model, processor


def tiny_llava_next(
    *,
    layers: int = 4,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    image_size: int = 16,
    patch_size: int = 4,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """A LLaVA-NeXT-shaped model: anyres tiling over ``image_size`` tiles plus ``image_newline``.

    Wide, tall and square images give different image-token counts.
    """
    tokenizer = word_tokenizer()
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    config = LlavaNextConfig(
        vision_config=_vision_config(image_size, patch_size),
        text_config=_text_config(len(tokenizer), layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return model, processor
