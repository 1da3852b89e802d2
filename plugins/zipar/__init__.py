"""ZipAR: next-set decoding, several grid rows per forward."""

from .plugin import ZipARConfig, ZipARPlugin

__all__ = ["ZipARConfig", "ZipARPlugin"]
