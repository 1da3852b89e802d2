"""Tiny random continuous-token AR generators (target and draft sharing one VAE) for tests."""

from __future__ import annotations

from pathlib import Path

import torch

from ..car.head import DiffusionHead
from ..car.model import ContinuousARConfig, ContinuousARModel
from .ar import TINY_WORDS
from .tokenizer import word_tokenizer


def tiny_vae(seed: int = 0):
    """A 16 px ``AutoencoderKL`` with 4 x 4 x 4 latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16, 16), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         latent_channels=4, norm_num_groups=8, sample_size=16).eval()


def tiny_continuous_ar(seed: int = 0, hidden: int = 32, layers: int = 2, head_width: int = 32, head_depth: int = 2,
                       vae=None, train_timesteps: int = 1000, spacing: str = "leading") -> ContinuousARModel:
    from diffusers import DDPMScheduler
    from transformers import LlamaConfig, LlamaModel

    vae = vae if vae is not None else tiny_vae()
    torch.manual_seed(seed)
    tok = word_tokenizer(TINY_WORDS)
    backbone = LlamaModel(LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )).eval()
    head = DiffusionHead(token_dim=4, cond_dim=hidden, width=head_width, depth=head_depth)
    with torch.no_grad():  # zero-initialised outputs would make every head the same function
        head.out.weight.normal_(0, 0.2)
    scheduler = DDPMScheduler(num_train_timesteps=train_timesteps, beta_schedule="squaredcos_cap_v2",
                              timestep_spacing=spacing)
    config = ContinuousARConfig(grid=(4, 4), token_dim=4, boi_token_id=tok.convert_tokens_to_ids("<boi>"),
                                image_size=16)
    return ContinuousARModel(backbone, head.eval(), vae, scheduler, tok, config)


def write_tiny_pair(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A target and a smaller draft in ``root/target`` and ``root/draft`` sharing ``root/vae``."""
    from dataclasses import replace

    vae = tiny_vae(seed)
    target = tiny_continuous_ar(seed, vae=vae)
    draft = tiny_continuous_ar(seed + 1, hidden=16, layers=1, head_width=16, vae=vae)
    for name, model in (("target", target), ("draft", draft)):
        model.config = replace(model.config, vae="../vae")
        model.save_pretrained(root / name)
    return root / "target", root / "draft"
