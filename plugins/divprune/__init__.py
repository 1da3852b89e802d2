"""divprune: keep the most diverse image tokens (a max-min subset) before the decoder's first layer."""

from .config import DivPruneConfig
from .plugin import DivPrunePlugin

__all__ = ["DivPruneConfig", "DivPrunePlugin"]
