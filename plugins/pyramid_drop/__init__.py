"""PyramidDrop: staged vision-token dropping inside the LLM (registered as ``pyramid_drop``)."""

from .config import PyramidDropConfig, default_layers
from .plugin import PyramidDropPlugin

__all__ = ["PyramidDropConfig", "PyramidDropPlugin", "default_layers"]
