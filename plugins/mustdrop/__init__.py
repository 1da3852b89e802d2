"""MustDrop: merge in the vision tower, filter in prefill, evict in decoding (registered as ``mustdrop``)."""

from .config import MustDropConfig, default_layers
from .plugin import MustDropPlugin

__all__ = ["MustDropConfig", "MustDropPlugin", "default_layers"]
