"""Tiny random-weight diffusers text-to-image pipelines, built offline with the real classes.

Sizes mirror diffusers' own ``get_dummy_components`` so the pipelines exercise the same
code paths as SD 1.x/2.x/SD-Turbo and SDXL checkpoints, yet build and run in well under a
second on a CPU. The tokenizer is a real ``CLIPTokenizer`` over a small byte-level BPE
vocabulary written here, because ``hf-internal-testing/tiny-random-clip`` cannot be downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .tokenizer import BASE_WORDS

#: prompt length in tokens; the text encoders' position table covers exactly this many
MAX_PROMPT_TOKENS = 32
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
PROMPT_WORDS = ("cube", "sphere", "cone", "cylinder", "ring", "photo", "painting", "drawing", "with", "beside")


def _byte_level_chars() -> list[str]:
    """The characters the ByteLevel pre-tokenizer emits for printable ASCII (space is split off first)."""
    return [chr(c) for c in range(ord("!"), ord("~") + 1)]


def clip_tokenizer(extra_words: Iterable[str] = (), model_max_length: int = MAX_PROMPT_TOKENS) -> CLIPTokenizer:
    """A real ``CLIPTokenizer`` whose BPE merges spell out a small word list.

    Every printable ASCII character (alone and word-final) is in the vocabulary, so any
    lower-case ASCII prompt encodes without unknown tokens; listed words become one token.
    """
    chars = _byte_level_chars()
    vocab: dict[str, int] = {}
    for token in [BOS, EOS, *chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    words = [w.lower() for w in (*BASE_WORDS, *PROMPT_WORDS, *extra_words) if w.strip().isalpha() and len(w) > 1]
    for word in dict.fromkeys(words):
        pieces = [*word[:-1], word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if merged not in vocab:
                merges.append((left, right))
                vocab[merged] = len(vocab)
            left = merged
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=model_max_length,
    )


def _text_config(tokenizer: CLIPTokenizer, **overrides) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=5,
        num_attention_heads=4,
        layer_norm_eps=1e-5,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # not 2, so pooling finds the real end-of-text position
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )


def _vae(sample_size: int) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=sample_size,
    )


_SCHEDULERS: dict[str, Callable[[], SchedulerMixin]] = {
    "ddim": lambda: DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    ),
    "euler": lambda: EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    ),
}


def _scheduler(name: str) -> SchedulerMixin:
    if name not in _SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; allowed: {sorted(_SCHEDULERS)}")
    return _SCHEDULERS[name]()


def _unet(sample_size: int, **extra) -> UNet2DConditionModel:
    """The two-block UNet diffusers' own tests use; ``extra`` adds SDXL's conditioning."""
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **extra,
    )


def tiny_sd(seed: int = 0, scheduler: str = "ddim", sample_size: int = 16) -> StableDiffusionPipeline:
    """A Stable-Diffusion-1.x-shaped pipeline; images are ``2 * sample_size`` pixels square (32 by default)."""
    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    unet = _unet(sample_size, cross_attention_dim=32)
    torch.manual_seed(seed)
    vae = _vae(2 * sample_size)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=_scheduler(scheduler),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl(seed: int = 0, scheduler: str = "euler", sample_size: int = 16) -> StableDiffusionXLPipeline:
    """An SDXL-shaped pipeline: two text encoders (the second with a projection) and text-time conditioning."""
    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    unet = _unet(
        sample_size,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 size/crop ids x 8 + pooled text_encoder_2 width
        cross_attention_dim=64,  # both encoders' hidden states concatenated
        norm_num_groups=1,
    )
    torch.manual_seed(seed)
    vae = _vae(2 * sample_size)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_act="gelu", projection_dim=32))
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, hidden_act="gelu", projection_dim=32))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet.eval(),
        scheduler=_scheduler(scheduler),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
