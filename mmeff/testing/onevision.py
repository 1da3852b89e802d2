"""A tiny random LLaVA-OneVision with a real processor (image + video), built offline from configs.

What it keeps real: a SigLIP tower (no CLS token, ``vision_feature_select_strategy="full"``,
feature layer -1), a Qwen2 decoder (1-D RoPE), anyres tiling with unpadding, ``image_newline`` and
the ``anyres_max_9`` down-sampling of large tile grids, and videos whose frames are 2x2-pooled
after the projector (plus one newline token per video). Only the sizes shrink: 16x16 tiles of
4x4 patches (16 features per tile).

Image tokens per image (alone in its prompt; several images per prompt are tiled the same way,
see the adapter): 24x24 -> 88, 16x40 -> 118, 64x64 -> 172 (a 4x4 tile grid, interpolated to
12x12). A video of F frames -> F * 4 + 1 tokens (4 frames -> 17).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerFast

from .qwen import ROLE_WORDS
from .tokenizer import chatml_word_tokenizer

if TYPE_CHECKING:
    from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor

PAD, IM_START, IM_END, IMAGE, VIDEO = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"
ONEVISION_SPECIAL = [PAD, IM_START, IM_END, "<unk>", IMAGE, VIDEO]

# The released llava-hf/llava-onevision-qwen2-*-hf template: every image first, then every video,
# then the text of the turn; any role (system included) gets the same <|im_start|>role\n header.
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TILE, PATCH = 16, 4
# anyres candidates (height, width): 1x1, 1x2, 2x1, 2x2 and 4x4 tiles; the 4x4 grid (256 features)
# exceeds anyres_max_9 (9 * 16) by more than 1.1x, so the model interpolates it as the real one does
PINPOINTS = [[TILE, TILE], [TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE], [4 * TILE, 4 * TILE]]


def onevision_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``BASE_WORDS`` plus the chat and vision special tokens; left padding."""
    return chatml_word_tokenizer(ONEVISION_SPECIAL, {"image_token": IMAGE, "video_token": VIDEO}, ROLE_WORDS)


def tiny_llava_onevision(
    *,
    layers: int = 4,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor]:
    """``(model, processor)``: SigLIP (2 layers) + 2-layer projector + Qwen2 (``layers``); float32, eval."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = onevision_tokenizer()
    names = dict(pad=PAD, eos=IM_END, image=IMAGE, video=VIDEO)
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in names.items()}
    text = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        pad_token_id=ids["pad"], bos_token_id=ids["pad"], eos_token_id=ids["eos"], tie_word_embeddings=False,
    )
    vision = SiglipVisionConfig(
        image_size=TILE, patch_size=PATCH, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, vision_use_head=False,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=ids["image"], video_token_index=ids["video"],
        vision_feature_select_strategy="full", vision_feature_layer=-1, image_grid_pinpoints=PINPOINTS,
        vision_aspect_ratio="anyres_max_9",
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.eos_token_id = ids["eos"]
    # random weights emit placeholder tokens a trained model never writes; one in an answer would
    # become an image slot when generate(use_cache=False) re-reads the sequence
    model.generation_config.suppress_tokens = [ids["image"], ids["video"]]

    size = {"height": TILE, "width": TILE}
    image_processor = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=PINPOINTS)
    video_processor = LlavaOnevisionVideoProcessor(size=size, do_sample_frames=False)
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        num_image_tokens=(TILE // PATCH) ** 2, vision_feature_select_strategy="full",
        chat_template=ONEVISION_CHAT_TEMPLATE, vision_aspect_ratio="anyres_max_9",
    )
    return model, processor
