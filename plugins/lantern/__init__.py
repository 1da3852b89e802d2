"""LANTERN: relaxed speculative acceptance over latent-space neighbours of the codebook."""

from .plugin import LanternConfig, LanternPlugin

__all__ = ["LanternConfig", "LanternPlugin"]
