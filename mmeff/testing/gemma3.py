"""A tiny random Gemma 3 (``Gemma3ForConditionalGeneration``) with a real ``Gemma3Processor``, offline.

What it keeps real: a SigLIP tower (no CLS token) whose patch grid is average-pooled to a fixed
number of soft tokens per image, Gemma 3's decoder (q/k norms, ``query_pre_attn_scalar``
scaling, separate rotary tables for local and global layers, interleaved sliding-window and
full-attention layers), the processor's ``<start_of_image>`` expansion and its ``token_type_ids``
(which make each image's tokens attend to each other bidirectionally in prefill), and Gemma's
turn format. Only the sizes shrink: 32x32 images of 4x4 patches pooled 2x2 to 16 tokens, and a
sliding window of 20 tokens, shorter than the test prompts, so windowed layers really cut keys off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerFast

from .qwen import ROLE_WORDS
from .tokenizer import chatml_word_tokenizer

if TYPE_CHECKING:
    from transformers import Gemma3ForConditionalGeneration, Gemma3Processor

PAD, EOS, BOS, START, END = "<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
GEMMA_SPECIAL = [PAD, EOS, BOS, "<unk>", START, END, BOI, EOI, IMAGE]

# The released google/gemma-3-*-it template, trimmed to what it renders for text and images: a
# system message is folded into the first user turn, the assistant's role is called "model".
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

IMAGE_SIZE, PATCH, TOKENS_PER_IMAGE = 32, 4, 16
SLIDING_WINDOW = 20
# five local layers to one global in the released models; four layers here, the third global
LAYER_TYPES = ("sliding_attention", "sliding_attention", "full_attention", "sliding_attention")


def gemma3_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``BASE_WORDS`` plus Gemma's turn and image tokens; left padding."""
    return chatml_word_tokenizer(
        GEMMA_SPECIAL, {"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI}, [*ROLE_WORDS, "model"],
        eos=EOS, pad=PAD, bos=BOS,
    )


def tiny_gemma3(
    *,
    layers: int = 4,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    sliding_window: int = SLIDING_WINDOW,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[Gemma3ForConditionalGeneration, Gemma3Processor]:
    """``(model, processor)``: SigLIP (2 layers) + Gemma 3's projector + a Gemma 3 decoder; float32, eval."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    tokenizer = gemma3_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(t) for name, t in
           dict(pad=PAD, eos=EOS, bos=BOS, end=END, boi=BOI, eoi=EOI, image=IMAGE).items()}
    layer_types = [LAYER_TYPES[i % len(LAYER_TYPES)] for i in range(layers)]
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        query_pre_attn_scalar=hidden // heads * 2,  # not head_dim, as in the 27B model, so the scale is checked
        sliding_window=sliding_window, layer_types=layer_types, max_position_embeddings=4096,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
    )
    vision = SiglipVisionConfig(
        image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=ids["boi"], eoi_token_index=ids["eoi"], image_token_index=ids["image"],
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # Gemma 3 initialises its projection to zeros: images would change nothing
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.1)
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.eos_token_id = [ids["eos"], ids["end"]]
    # random weights emit placeholder tokens a trained model never writes; one in an answer would
    # become an image slot when generate(use_cache=False) re-reads the sequence
    model.generation_config.suppress_tokens = [ids["image"], ids["boi"], ids["eoi"]]

    image_processor = Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=TOKENS_PER_IMAGE)
    return model, processor
