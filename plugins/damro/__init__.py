"""DAMRO: contrast against only the ViT's outlier tokens (registered as ``damro``)."""

from .config import DAMROConfig
from .plugin import DAMROPlugin

__all__ = ["DAMROConfig", "DAMROPlugin"]
