"""Bundled adapters; importing this module registers them."""

from . import ar_image, continuous_ar, diffusers_t2i, flux, janus, llava, llava_next, pixart, qwen2_vl  # noqa: F401
from .base import Adapter

__all__ = ["Adapter"]
