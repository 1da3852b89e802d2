"""Tiny random-weight diffusers text-to-image pipelines, built offline with the real classes.

Sizes mirror diffusers' own ``get_dummy_components`` so the pipelines exercise the same
code paths as SD 1.x/2.x/SD-Turbo, SDXL, PixArt-alpha/sigma and FLUX.1 checkpoints, yet build
and run in well under a second on a CPU. The tokenizers are a real ``CLIPTokenizer`` over a
small byte-level BPE vocabulary and a real ``T5Tokenizer`` over a small Unigram vocabulary,
both written here, because ``hf-internal-testing/tiny-random-clip``/``-t5`` cannot be downloaded.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

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
    ranks: dict[tuple[str, str], int] = {}
    words = [w.lower() for w in (*BASE_WORDS, *PROMPT_WORDS, *extra_words) if w.strip().isalpha() and len(w) > 1]
    for word in dict.fromkeys(words):
        # what the merges so far make of this word, then new (lower-priority) merges that join those
        # pieces: an earlier word's merges can split a later word, so a plain letter chain is not enough
        pieces = _apply_bpe([*word[:-1], word[-1] + "</w>"], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if (left, right) not in ranks:
                ranks[(left, right)] = len(ranks)
            vocab.setdefault(merged, len(vocab))
            left = merged
    merges = sorted(ranks, key=ranks.get)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=model_max_length,
    )


def _apply_bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding as the tokenizer runs it: merge the best-ranked adjacent pair until none applies."""
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), len(ranks) + 1), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank > len(ranks):
            break
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2:]]
    return pieces


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
    # PixArt: diffusers' own test scheduler, and the DDPM one PixArt-Alpha-DMD ships (accepts timesteps=[400])
    "euler_ancestral": lambda: EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="trailing"
    ),  # SDXL-Turbo's: draws scheduler noise from the generator at every step
    "ddim_default": DDIMScheduler,
    "ddpm": DDPMScheduler,
    # FLUX.1-schnell (static shift 1) and FLUX.1-dev (resolution-dependent shift mu)
    "flow": FlowMatchEulerDiscreteScheduler,
    "flow_dynamic": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
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
        vae=vae.eval(),  # as from_pretrained leaves it
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
        vae=vae.eval(),  # as from_pretrained leaves it
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


T5_SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in every T5 vocabulary


def t5_tokenizer(extra_words: Iterable[str] = (), model_max_length: int = 512) -> T5Tokenizer:
    """A real ``T5Tokenizer`` (Unigram) whose vocabulary holds a small word list.

    Listed words are one ``▁word`` piece; every lower-case letter, digit and ASCII punctuation
    mark is a (costly) piece too, so any lower-case ASCII prompt encodes without ``<unk>``.
    """
    words = [w.lower() for w in (*BASE_WORDS, *PROMPT_WORDS, *extra_words) if w.strip() and " " not in w.strip()]
    pieces: list[tuple[str, float]] = [(t, 0.0) for t in T5_SPECIAL] + [("\u2581", -2.0)]
    pieces += [("\u2581" + w.strip(), -1.0) for w in dict.fromkeys(words)]
    pieces += [(c, -5.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    unique = list({p: (p, score) for p, score in pieces}.values())
    return T5Tokenizer(vocab=unique, extra_ids=0, model_max_length=model_max_length)


def _t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    """The shape of ``hf-internal-testing/tiny-random-t5``'s encoder (d_model 32), made by hand."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def tiny_pixart(
    seed: int = 0, scheduler: str = "ddim_default", sample_size: int = 8, sigma: bool = False
) -> PixArtAlphaPipeline | PixArtSigmaPipeline:
    """A PixArt-alpha-shaped pipeline (``sigma=True``: PixArt-sigma); images are ``2 * sample_size`` px square.

    The transformer is diffusers' test fixture (learned sigma: 8 output channels for 4 latent
    ones). ``sample_size`` 8 has no aspect-ratio bin, so call it with ``use_resolution_binning=False``.
    ``scheduler="ddpm"`` accepts custom ``timesteps=`` (PixArt-Alpha-DMD's one-step ``[400]``).
    """
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    vae = _vae(2 * sample_size)
    torch.manual_seed(seed)
    text_encoder = _t5_encoder(tokenizer)
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe = cls(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae.eval(),  # as from_pretrained leaves it
        transformer=transformer.eval(),
        scheduler=_scheduler(scheduler),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux(
    seed: int = 0, guidance_embeds: bool = False, scheduler: str = "flow", vae_blocks: int = 1
) -> FluxPipeline:
    """A FLUX.1-shaped pipeline: CLIP (pooled) + T5 text encoders, packed 2x2 latents, one latent channel.

    ``guidance_embeds=True`` and ``scheduler="flow_dynamic"`` make it FLUX.1-dev-like (distilled
    guidance, shift ``mu``); the defaults are schnell-like. ``vae_blocks=1`` is diffusers' fixture
    (VAE scale factor 1, sizes multiples of 2); ``vae_blocks=2`` downsamples by 2 (multiples of 4).
    Always pass ``height``/``width``: the pipeline's default is 128 x the VAE scale factor.
    """
    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_act="gelu", projection_dim=32))
    torch.manual_seed(seed)
    text_encoder_2 = _t5_encoder(tokenizer_2)
    torch.manual_seed(seed)
    blocks = (4, 8)[:vae_blocks]
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=blocks,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe = FluxPipeline(
        scheduler=_scheduler(scheduler),
        vae=vae.eval(),  # as from_pretrained leaves it
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
