"""Tiny-model factories and the shared plugin test mixin, for tests and plugin authors."""

from typing import Any

from .factories import tiny_llava, tiny_llava_next
from .gemma3 import tiny_gemma3
from .internvl import tiny_internvl
from .onevision import tiny_llava_onevision
from .qwen import tiny_qwen2_vl
from .tokenizer import word_tokenizer

_DIFFUSION = ("clip_tokenizer", "t5_tokenizer", "tiny_flux", "tiny_pixart", "tiny_sd", "tiny_sdxl")

__all__ = [
    "clip_tokenizer",
    "t5_tokenizer",
    "tiny_flux",
    "tiny_gemma3",
    "tiny_internvl",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_llava_onevision",
    "tiny_pixart",
    "tiny_qwen2_vl",
    "tiny_sd",
    "tiny_sdxl",
    "word_tokenizer",
]


def __getattr__(name: str) -> Any:
    """Diffusion factories load on first use, so VLM-only users never pay diffusers' import time."""
    if name in _DIFFUSION:
        from . import diffusion

        return getattr(diffusion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
