"""ToMe for the vision tower: bipartite token merging in every ViT layer (registered as ``tome``)."""

from .config import ToMeConfig
from .plugin import ToMePlugin

__all__ = ["ToMeConfig", "ToMePlugin"]
