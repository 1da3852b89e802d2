"""A tiny random InternVL (``InternVLForConditionalGeneration``, the HF format of InternVL2.5 / 3) with a
real ``InternVLProcessor``, built offline from configs.

What stays real: the processor's dynamic tiling (``GotOcr2ImageProcessor`` with ``crop_to_patches``: the
tile grid whose aspect ratio is closest to the image's, plus a thumbnail when there is more than one
tile), ``<img><IMG_CONTEXT>...</img>`` placeholders per image, videos expanded to one
``FrameN: <img>...</img>`` block per frame, InternViT (CLS token, layer scale) and the pixel-shuffle
projector, and a Qwen2 (or Llama) decoder with 1-D RoPE. Only the sizes shrink: 16-px tiles of 4-px
patches, so each tile gives ``(16/4)**2 * 0.5**2 = 4`` image tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerFast

from .tokenizer import chatml_word_tokenizer

if TYPE_CHECKING:
    from transformers import InternVLForConditionalGeneration, InternVLProcessor

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
IMG_START, IMG_END, IMG_CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
INTERNVL_SPECIAL = [PAD, IM_START, IM_END, "<unk>", IMG_START, IMG_END, IMG_CONTEXT, VIDEO]
ROLE_WORDS = ["user", "assistant", "system"]
#: the processor writes "Frame1: <img>...</img>\nFrame2: ..." for a video; frames past these map to <unk>
FRAME_WORDS = [f"Frame{i}" for i in range(1, 17)]

# InternVL's own format without its default system prompt: an image is "<IMG_CONTEXT>\n" (the processor
# expands it to <img> + context tokens + </img>), a video "<video>\n" (expanded frame by frame)
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif item['type'] == 'video' %}<video>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TILE, PATCH, DOWNSAMPLE, MAX_TILES = 16, 4, 0.5, 6
#: image tokens per tile: (TILE / PATCH) ** 2 patches, 2x2 of them merged by the pixel shuffle
TOKENS_PER_TILE = int((TILE // PATCH) ** 2 * DOWNSAMPLE**2)


def internvl_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``BASE_WORDS`` plus InternVL's special tokens, each matched whole; left padding.

    Exposes the attributes ``InternVLProcessor`` reads: ``start_image_token`` / ``end_image_token`` /
    ``context_image_token`` / ``video_token`` and their ``*_id``s.
    """
    return chatml_word_tokenizer(
        INTERNVL_SPECIAL,
        {"start_image_token": IMG_START, "end_image_token": IMG_END, "context_image_token": IMG_CONTEXT,
         "video_token": VIDEO},
        [*ROLE_WORDS, *FRAME_WORDS],
    )


def _text_config(text_model: str, vocab: int, ids: dict[str, int], *, layers: int, hidden: int, heads: int,
                 kv_heads: int) -> dict:
    if text_model not in ("qwen2", "llama"):
        raise ValueError(f"text_model must be 'qwen2' or 'llama', got {text_model!r}")
    return dict(
        model_type=text_model, vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=ids["pad"], bos_token_id=ids["pad"], eos_token_id=ids["eos"], tie_word_embeddings=False,
    )


def tiny_internvl(
    *,
    layers: int = 4,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    text_model: str = "qwen2",
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[InternVLForConditionalGeneration, InternVLProcessor]:
    """``(model, processor)``: InternViT (2 layers, 16-px tiles, 4-px patches) + pixel shuffle + a Qwen2
    (``text_model="llama"``: Llama) decoder; float32, eval.

    4 image tokens per tile; an image is cut into the 1..6-tile grid closest to its aspect ratio, plus a
    thumbnail tile when the grid has more than one. Image tokens per image: 16x16 -> 1 tile = 4,
    24x24 -> 2x2 + thumbnail = 20, 16x40 -> 3x1 + thumbnail = 16, 16x64 -> 4x1 + thumbnail = 20. A video
    is its frames, each resized to one tile: 4 frames -> 16 tokens. Frames are used as given (no sampling).
    """
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    tokenizer = internvl_tokenizer()
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in
           dict(pad=PAD, eos=IM_END, context=IMG_CONTEXT, start=IMG_START, end=IMG_END, video=VIDEO).items()}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=TILE, patch_size=PATCH)
    config = InternVLConfig(
        vision_config=vision,
        text_config=_text_config(text_model, len(tokenizer), ids, layers=layers, hidden=hidden, heads=heads,
                                 kv_heads=kv_heads),
        image_token_id=ids["context"],
        image_seq_length=TOKENS_PER_TILE,
        downsample_ratio=DOWNSAMPLE,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        # untied: with tied embeddings a random decoder echoes its last input token forever
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.eos_token_id = ids["eos"]
    # random weights emit placeholder tokens a trained model never writes; a placeholder in an
    # answer would become an image slot when generate(use_cache=False) re-reads the sequence
    model.generation_config.suppress_tokens = [ids["context"], ids["start"], ids["end"], ids["video"]]

    size = {"height": TILE, "width": TILE}
    image_processor = GotOcr2ImageProcessor(size=size, crop_to_patches=True, min_patches=1, max_patches=MAX_TILES)
    video_processor = InternVLVideoProcessor(size=size, do_sample_frames=False)
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  video_processor=video_processor, image_seq_length=TOKENS_PER_TILE,
                                  chat_template=INTERNVL_CHAT_TEMPLATE)
    return model, processor
