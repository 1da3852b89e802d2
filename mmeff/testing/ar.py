"""Tiny random autoregressive image generators for tests (no downloads)."""

from __future__ import annotations

import torch

from ..ar.model import ARImageConfig, ARImageModel
from .tokenizer import word_tokenizer

TINY_WORDS = ("red", "green", "blue", "circle", "square", "star", "left", "of", "two", "<boi>")


def tiny_ar_image(seed: int = 0, grid: int = 4, codebook: int = 16, hidden: int = 32, layers: int = 2,
                  attn_implementation: str = "sdpa") -> ARImageModel:
    """A ``LlamaForCausalLM`` over words + codes and a ``VQModel`` whose 16 px images are ``grid x grid`` codes."""
    from diffusers import VQModel
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = word_tokenizer(TINY_WORDS)
    offset = len(tok)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=offset + codebook, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64 + grid * grid,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        attn_implementation=attn_implementation,
    )).eval()
    levels = {2: 2, 4: 3, 8: 4}[16 // grid]
    vq = VQModel(
        in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16)[:levels], layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4, num_vq_embeddings=codebook, vq_embed_dim=4, norm_num_groups=8, sample_size=16,
    ).eval()
    config = ARImageConfig(grid=(grid, grid), codebook_size=codebook, code_offset=offset,
                           boi_token_id=tok.convert_tokens_to_ids("<boi>"), image_size=16)
    return ARImageModel(lm, vq, tok, config)
