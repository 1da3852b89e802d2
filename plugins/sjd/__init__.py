"""Speculative Jacobi decoding for autoregressive image-token models."""

from .plugin import SJDConfig, SJDPlugin

__all__ = ["SJDConfig", "SJDPlugin"]
