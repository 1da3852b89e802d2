"""Bundled adapters; importing this module registers them."""

from . import diffusers_t2i, flux, llava, llava_next, pixart  # noqa: F401
from .base import Adapter

__all__ = ["Adapter"]
