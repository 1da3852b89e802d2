"""The shapes LLaVA: a real ``LlavaForConditionalGeneration`` with its own tokenizer and processor."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from ..testing.tokenizer import LLAVA_CHAT_TEMPLATE, word_tokenizer
from .questions import NUMBER_WORDS
from .world import COLORS, SHAPES

TESTBED_WORDS = [*COLORS, *SHAPES, *NUMBER_WORDS, "yes", "no", "left", "right", "above", "below", "of", "color",
                 "describe", "objects", "object", "how", "many", "there", "is", "are", "the", "in", "image", "what"]


@dataclass(frozen=True)
class ShapesLlavaSpec:
    image_size: int = 96
    patch_size: int = 8  # 12 x 12 = 144 image tokens
    vision_hidden: int = 128
    vision_layers: int = 4
    text_hidden: int = 128
    text_layers: int = 6
    heads: int = 4

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_processor(spec: ShapesLlavaSpec) -> LlavaProcessor:
    tokenizer = word_tokenizer(TESTBED_WORDS)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        do_center_crop=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def build_model(spec: ShapesLlavaSpec, processor: LlavaProcessor, seed: int = 0) -> LlavaForConditionalGeneration:
    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        image_size=spec.image_size, patch_size=spec.patch_size, hidden_size=spec.vision_hidden,
        intermediate_size=4 * spec.vision_hidden, num_hidden_layers=spec.vision_layers, num_attention_heads=spec.heads,
    )
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.text_hidden, intermediate_size=4 * spec.text_hidden,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    config.mmeff_testbed_spec = asdict(spec)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model
