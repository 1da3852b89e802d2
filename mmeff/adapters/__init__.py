"""Bundled adapters; importing this module registers them."""

from . import llava, llava_next  # noqa: F401
from .base import Adapter

__all__ = ["Adapter"]
