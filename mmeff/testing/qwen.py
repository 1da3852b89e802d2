"""A tiny random Qwen2-VL / Qwen2.5-VL with a real processor, built offline from configs.

Qwen's processors differ from LLaVA's in ways plugins must handle: image-token counts follow each
image's own size (dynamic resolution), the text model uses 3-D multimodal RoPE (``mrope``), and
video goes through a separate video processor. This factory keeps all of that real and only
shrinks the sizes, so tests exercise the same code paths as the released checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedTokenizerFast

from .tokenizer import chatml_word_tokenizer

if TYPE_CHECKING:
    from transformers import ProcessorMixin, Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
QWEN_SPECIAL = [PAD, IM_START, IM_END, "<unk>", VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]
ROLE_WORDS = ["user", "assistant", "system"]

# Qwen's own format (no default system prompt): <|im_start|>role\n...<|im_end|>\n, vision items wrapped
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PATCH, MERGE, TEMPORAL = 4, 2, 2
VARIANTS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# Pixel bounds for Qwen's smart_resize (sides rounded to PATCH * MERGE = 8): 16x16 .. 64x64.
MIN_PIXELS, MAX_PIXELS = 16 * 16, 64 * 64


def qwen_tokenizer(extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``BASE_WORDS`` (+ ``extra_words``) plus Qwen's special tokens, each matched whole;
    left padding."""
    return chatml_word_tokenizer(QWEN_SPECIAL, {"image_token": IMAGE_PAD, "video_token": VIDEO_PAD},
                                 [*ROLE_WORDS, *extra_words])


def _configs(variant: str, vocab: int, ids: dict[str, int], *, layers: int, hidden: int, heads: int,
             kv_heads: int) -> object:
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    half_head = hidden // heads // 2
    t = max(1, half_head // 4)
    mrope = [t, (half_head - t) // 2, half_head - t - (half_head - t) // 2]  # head_dim 8 -> [1, 1, 2]
    text = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        pad_token_id=ids["pad"], bos_token_id=ids["pad"], eos_token_id=ids["eos"],
    )
    shared = dict(depth=2, num_heads=4, in_channels=3, patch_size=PATCH, spatial_merge_size=MERGE,
                  temporal_patch_size=TEMPORAL)
    tokens = dict(image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["vstart"],
                  vision_end_token_id=ids["vend"])
    if variant == "qwen2_vl":
        vision = dict(shared, embed_dim=32, hidden_size=hidden, mlp_ratio=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
    if variant == "qwen3_vl":
        from transformers import Qwen3VLConfig

        # Qwen3-VL: q/k norms, interleaved M-RoPE, and deepstack features from vision blocks 0 and 1
        # added to the hidden states after decoder layers 0 and 1; learned 2-D position embeddings (4x4 grid)
        text = dict(text, head_dim=hidden // heads,
                    rope_parameters={**text["rope_parameters"], "mrope_interleaved": True})
        vision = dict(shared, hidden_size=32, intermediate_size=64, out_hidden_size=hidden,
                      num_position_embeddings=16, deepstack_visual_indexes=[0, 1])
        return Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
    # window_size is in pixels: 16 px = 2x2 merged patches per window, so a 24x24 image has several
    # windows (incl. ragged ones); block 1 is full attention, as every fourth-ish block is in the real model.
    vision = dict(shared, hidden_size=32, intermediate_size=64, out_hidden_size=hidden, window_size=16,
                  fullatt_block_indexes=[1], tokens_per_second=2)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)


def tiny_qwen2_vl(
    *,
    variant: str = "qwen2_vl",
    layers: int = 4,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[Qwen2VLForConditionalGeneration | Qwen2_5_VLForConditionalGeneration, ProcessorMixin]:
    """``(model, processor)`` for ``variant`` ``"qwen2_vl"``, ``"qwen2_5_vl"`` or ``"qwen3_vl"``; float32, eval.

    Patch 4, merge 2 (one image token per 8x8 pixels after Qwen's smart_resize, sides rounded to
    multiples of 8, area clamped to [16x16, 64x64]). Image tokens per image: 24x24 -> 9,
    16x40 -> 10, 32x32 -> 16, 64x64 -> 64. A video of 4 frames at 24x24 -> 2 temporal groups x 9 = 18.
    Frames are used as given (no frame sampling), so a list of frames needs no metadata.
    """
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
    )

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    tokenizer = qwen_tokenizer()
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in
           dict(pad=PAD, eos=IM_END, image=IMAGE_PAD, video=VIDEO_PAD, vstart=VISION_START, vend=VISION_END).items()}
    config = _configs(variant, len(tokenizer), ids, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads)
    torch.manual_seed(seed)
    model_cls = {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
                 "qwen3_vl": Qwen3VLForConditionalGeneration}[variant]
    model = model_cls(config).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.eos_token_id = ids["eos"]
    # random weights emit placeholder tokens a trained model never writes; a placeholder in an
    # answer would become an image slot when generate(use_cache=False) re-reads the sequence
    model.generation_config.suppress_tokens = [ids["image"], ids["video"], ids["vstart"], ids["vend"]]

    pixels = dict(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, patch_size=PATCH, merge_size=MERGE,
                  temporal_patch_size=TEMPORAL)
    image_processor = Qwen2VLImageProcessor(**pixels)
    if variant == "qwen3_vl":  # timestamps between frames; frames given as arrays carry no fps, so state one
        from transformers import Qwen3VLVideoProcessor

        video_processor = Qwen3VLVideoProcessor(**pixels, do_sample_frames=False, fps=2)
    else:
        video_processor = Qwen2VLVideoProcessor(**pixels, do_sample_frames=False, cap_pixels_per_frame=False)
    processor_cls = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor,
                     "qwen3_vl": Qwen3VLProcessor}[variant]
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                              chat_template=QWEN_CHAT_TEMPLATE)
    return model, processor


# -- references for tests: the unmodified model's own ingredients ---------------------------
def merged_embeddings(model, inputs: dict[str, Any]) -> torch.Tensor:
    """Text embeddings with the image features scattered in, as ``Qwen2VLModel.forward`` does."""
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    features = torch.cat(features, dim=0).to(embeds.dtype)
    mask = (inputs["input_ids"] == model.config.image_token_id)[..., None]
    assert int(mask.sum()) == features.shape[0]
    return embeds.masked_scatter(mask, features)


def original_positions(model, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The full prompt's (3, B, L) M-RoPE ids and (B, 1) rope_deltas, as Qwen's generate computes them."""
    return model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
