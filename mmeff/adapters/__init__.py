"""Bundled adapters; importing this module registers them."""

from . import diffusers_t2i, llava, llava_next  # noqa: F401
from .base import Adapter

__all__ = ["Adapter"]
