"""M3ID: contrast against the prompt without the image, more as the answer grows (registered as ``m3id``)."""

from .config import M3IDConfig
from .plugin import M3IDPlugin

__all__ = ["M3IDConfig", "M3IDPlugin"]
