"""ToMe for Stable Diffusion: merge similar image tokens around the attention of diffusion transformer blocks."""

from .config import ToMeSDConfig
from .plugin import ToMeSDPlugin

__all__ = ["ToMeSDConfig", "ToMeSDPlugin"]
