"""Bundled adapters; importing this module registers them."""

from . import (  # noqa: F401
    ar_image,
    continuous_ar,
    diffusers_t2i,
    flux,
    gemma3,
    internvl,
    janus,
    llava,
    llava_next,
    llava_onevision,
    pixart,
    qwen2_vl,
    timm_vit,
)
from .base import Adapter

__all__ = ["Adapter"]
