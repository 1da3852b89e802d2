"""The shapes autoregressive text-to-image model: a ``LlamaForCausalLM`` over words + VQ codes, small enough for a CPU.

32 px images, a diffusers ``VQModel`` to an 8 x 8 grid of codes from a 512-entry codebook
(16-d), and a 4-layer, 128-wide Llama whose vocabulary is the testbed's word list, a
``<boi>`` token that closes the caption, then the codebook (``code_offset`` = number of text
tokens). Assembled into an ``ARImageModel`` (``mmeff/ar/model.py``), whose folder also loads
with the standard classes (``lm/`` and ``vq/``).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import VQModel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..ar.model import ARImageConfig, ARImageModel
from ..testing.tokenizer import word_tokenizer
from .t2i_prompts import T2I_IMAGE_SIZE, T2I_WORDS

BOI = "<boi>"


@dataclass(frozen=True)
class ShapesARSpec:
    image_size: int = T2I_IMAGE_SIZE
    vq_channels: tuple[int, ...] = (32, 64, 64)  # factor 4: 32 px -> 8 x 8 codes
    vq_norm_groups: int = 16
    latent_channels: int = 16  # also the codebook vectors' width
    codebook_size: int = 512  # 128 capped the oracle on reconstructions at 0.60; 512 reaches 0.94
    lm_hidden: int = 128
    lm_layers: int = 4
    lm_heads: int = 4
    lm_intermediate: int = 512
    max_positions: int = 128  # longest caption (8 tokens) + <boi> + 64 codes = 73, with a margin

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // 2 ** (len(self.vq_channels) - 1)
        return side, side


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word tokenizer plus ``<boi>`` as an added special token.

    Passed as an ordinary extra word, ``<boi>`` would be split by the punctuation
    pre-tokenizer into three ``<unk>``; as a special token it is one id, kept on reload.
    ``tokenizer("")`` is ``[bos]``, so the null caption is ``[bos, <boi>]``.
    """
    tokenizer = word_tokenizer(T2I_WORDS)
    tokenizer.add_special_tokens({"extra_special_tokens": [BOI]})
    tokenizer.init_kwargs["padding_side"] = "left"  # saved with the folder, as generation batches need
    return tokenizer


def boi_token_id(tokenizer: PreTrainedTokenizerFast) -> int:
    return tokenizer.convert_tokens_to_ids(BOI)


def build_vq(spec: ShapesARSpec) -> VQModel:
    n = len(spec.vq_channels)
    return VQModel(
        in_channels=3, out_channels=3, block_out_channels=spec.vq_channels, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        latent_channels=spec.latent_channels, vq_embed_dim=spec.latent_channels,
        num_vq_embeddings=spec.codebook_size, norm_num_groups=spec.vq_norm_groups, sample_size=spec.image_size,
    )


def build_lm(spec: ShapesARSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """Text ids first, then the codebook: ``code_offset = len(tokenizer)``."""
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer) + spec.codebook_size, hidden_size=spec.lm_hidden,
        intermediate_size=spec.lm_intermediate, num_hidden_layers=spec.lm_layers,
        num_attention_heads=spec.lm_heads, num_key_value_heads=spec.lm_heads,
        max_position_embeddings=spec.max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    ))


def model_config(spec: ShapesARSpec, tokenizer: PreTrainedTokenizerFast, null_caption: bool = True) -> ARImageConfig:
    """``null_caption``: trained with caption dropout, so guidance may use the ``[bos, <boi>]`` row."""
    return ARImageConfig(grid=spec.grid, codebook_size=spec.codebook_size, code_offset=len(tokenizer),
                         boi_token_id=boi_token_id(tokenizer), image_size=spec.image_size, null_caption=null_caption)


def assemble(spec: ShapesARSpec, tokenizer: PreTrainedTokenizerFast, lm: LlamaForCausalLM, vq: VQModel,
             null_caption: bool = True) -> ARImageModel:
    return ARImageModel(lm.eval(), vq.eval(), tokenizer, model_config(spec, tokenizer, null_caption))
