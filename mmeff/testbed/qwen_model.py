"""The shapes Qwen2-VL: a real ``Qwen2VLForConditionalGeneration`` + ``Qwen2VLProcessor`` for the testbed.

A second bundled VLM in a modern layout, so plugins meet dynamic resolution (the image-token
count follows the image's size), M-RoPE and a 2x2 patch merger on a model that actually sees.
Patch 4, merge 2: one image token per 8x8 pixels, so 96 px scenes give 144 tokens and 64 px
scenes 64. Tokenizer and chat template are the offline Qwen ones from :mod:`mmeff.testing.qwen`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import (
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from ..testing.qwen import (
    IM_END,
    IMAGE_PAD,
    PAD,
    QWEN_CHAT_TEMPLATE,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    qwen_tokenizer,
)
from .model import TESTBED_WORDS


@dataclass(frozen=True)
class ShapesQwen2VLSpec:
    image_size: int = 96  # 12 x 12 = 144 image tokens
    small_size: int = 64  # the second training size: 8 x 8 = 64 image tokens
    patch_size: int = 4
    merge_size: int = 2
    temporal_patch_size: int = 2
    vision_hidden: int = 128  # the bundled model's; 64 (MLP x2) trains faster and never learnt yes/no (docs)
    vision_layers: int = 4
    vision_mlp_ratio: int = 4
    text_hidden: int = 128
    text_layers: int = 6
    text_intermediate: int = 384
    heads: int = 4
    kv_heads: int = 2
    min_pixels: int = 32 * 32
    max_pixels: int = 96 * 96  # larger inputs shrink to about 144 tokens

    @property
    def token_pixels(self) -> int:
        """Pixels per side of one image token (a merged block of patches)."""
        return self.patch_size * self.merge_size

    def image_tokens(self, size: int | None = None) -> int:
        return ((size or self.image_size) // self.token_pixels) ** 2

    @property
    def mrope_section(self) -> list[int]:
        """(t, h, w) frequency split of half a head (head_dim 32 -> [4, 6, 6])."""
        half = self.text_hidden // self.heads // 2
        t = half // 4
        return [t, (half - t) // 2, half - t - (half - t) // 2]


def build_qwen_processor(spec: ShapesQwen2VLSpec) -> Qwen2VLProcessor:
    tokenizer = qwen_tokenizer(TESTBED_WORDS)
    pixels = dict(size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels},
                  patch_size=spec.patch_size, merge_size=spec.merge_size, temporal_patch_size=spec.temporal_patch_size)
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels, do_sample_frames=False, cap_pixels_per_frame=False),
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def build_qwen_model(spec: ShapesQwen2VLSpec, processor: Qwen2VLProcessor, seed: int = 0
                     ) -> Qwen2VLForConditionalGeneration:
    tok = processor.tokenizer
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in dict(
        pad=PAD, eos=IM_END, image=IMAGE_PAD, video=VIDEO_PAD, vstart=VISION_START, vend=VISION_END).items()}
    text = dict(
        vocab_size=len(tok), hidden_size=spec.text_hidden, intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=1024, pad_token_id=ids["pad"], bos_token_id=ids["pad"], eos_token_id=ids["eos"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": spec.mrope_section},
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=spec.vision_layers, embed_dim=spec.vision_hidden, hidden_size=spec.text_hidden,
        mlp_ratio=spec.vision_mlp_ratio, num_heads=spec.heads, in_channels=3, patch_size=spec.patch_size,
        spatial_merge_size=spec.merge_size, temporal_patch_size=spec.temporal_patch_size,
    )
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["image"],
                           video_token_id=ids["video"], vision_start_token_id=ids["vstart"],
                           vision_end_token_id=ids["vend"], tie_word_embeddings=False)
    config.mmeff_testbed_spec = asdict(spec)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.eos_token_id = ids["eos"]
    # an answer is words: placeholders written by an undertrained model would become image slots on re-reading
    model.generation_config.suppress_tokens = [ids["image"], ids["video"], ids["vstart"], ids["vend"]]
    return model
