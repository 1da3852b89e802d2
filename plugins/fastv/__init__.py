"""FastV: drop the least-attended image tokens once, at one decoder layer (registered as ``fastv``)."""

from .config import FastVConfig
from .plugin import FastVPlugin

__all__ = ["FastVConfig", "FastVPlugin"]
