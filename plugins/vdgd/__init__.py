"""VDGD: describe first, then rerank plausible tokens by the description (registered as ``vdgd``)."""

from .config import VDGDConfig
from .plugin import VDGDPlugin

__all__ = ["VDGDConfig", "VDGDPlugin"]
