"""A tiny random Janus (``JanusForConditionalGeneration`` + ``JanusProcessor``) built offline, for tests."""

from __future__ import annotations

from typing import Any

import torch

from .tokenizer import word_tokenizer

IMAGE_TOKEN = "<image_placeholder>"
BOI_TOKEN = "<begin_of_image>"
EOI_TOKEN = "<end_of_image>"
ROLE_TOKENS = ("<|User|>", "<|Assistant|>")
JANUS_WORDS = ("dog", "running", "under", "rain", "house", "tree", "sky")

# Janus's chat format: "<|User|>: {content}\n\n<|Assistant|>:", every content item followed by "\n"
JANUS_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] | lower == 'user' %}<|User|>: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image_placeholder>{{ '\\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] + '\\n' }}{% endif %}"
    "{% endfor %}{{ '\\n' }}"
    "{% else %}<|Assistant|>:"
    "{% for item in message['content'] %}{% if item['type'] == 'text' and item['text'] %} {{ item['text'] }}"
    "</s>{% endif %}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)


def janus_tokenizer() -> Any:
    """Word-level tokenizer with the special tokens ``JanusProcessor`` reads (image, boi, eoi) and the role tags."""
    from transformers import PreTrainedTokenizerFast

    base = word_tokenizer([*JANUS_WORDS, *ROLE_TOKENS, IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN},
    )
    tok.add_tokens(list(ROLE_TOKENS), special_tokens=True)  # matched whole, before punctuation splitting
    tok.padding_side = "left"
    return tok


@torch.no_grad()
def _spread(model: Any) -> None:
    """Re-draw the decoder and generation path at unit scale, so code logits are peaked rather than flat.

    With transformers' 0.02 init every code is almost equally likely, and a test comparing two
    samplers would pass for any two loops that consume the same random numbers.
    """
    inner = model.model
    for module in (inner.language_model, inner.generation_embeddings, inner.generation_aligner, inner.generation_head):
        for sub in module.modules():
            if isinstance(sub, torch.nn.Embedding):
                sub.weight.normal_(0.0, 1.0)
            elif isinstance(sub, torch.nn.Linear):
                sub.weight.normal_(0.0, sub.in_features**-0.5)
    inner.generation_head.vision_head.weight.mul_(3.0)


def tiny_janus(seed: int = 0, grid: int = 4, codebook: int = 16, hidden: int = 32,
               attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """``(model, processor)``: float32, eval, ``grid x grid`` image tokens over a ``codebook``-code VQ.

    The generation config carries the bos / pad / boi ids that Janus's ``generate`` needs for
    its unconditional rows, so ``model.generate(..., generation_mode="image")`` works as shipped.
    """
    from transformers import (
        GenerationConfig,
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessor,
        JanusProcessor,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    tok = janus_tokenizer()
    patch = 4
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    vision = JanusVisionConfig(
        hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4, image_size=grid * patch, patch_size=patch,
        mlp_ratio=2, projection_dim=hidden, depth=1, num_image_tokens=grid * grid,
    )
    vq = JanusVQVAEConfig(
        embed_dim=8, num_embeddings=codebook, latent_channels=8, base_channels=32, channel_multiplier=[1, 1],
        num_res_blocks=1, projection_dim=hidden, image_token_embed_dim=hidden, num_patches=grid,
    )
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                         image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN))
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).float().eval()
    _spread(model)
    # a standalone config (not derived from the model config), so generation_kwargs survive save/load
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        guidance_scale=5.0, generation_kwargs={"boi_token_id": tok.convert_tokens_to_ids(BOI_TOKEN)},
    )
    image_processor = JanusImageProcessor(size={"height": grid * patch, "width": grid * patch}, min_size=patch,
                                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = JanusProcessor(image_processor=image_processor, tokenizer=tok, chat_template=JANUS_CHAT_TEMPLATE,
                               num_image_tokens=grid * grid)
    return model, processor
