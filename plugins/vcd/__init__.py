"""VCD: contrast against the same prompt with a DDPM-noised image (registered as ``vcd``)."""

from .config import VCDConfig
from .plugin import VCDPlugin

__all__ = ["VCDConfig", "VCDPlugin"]
