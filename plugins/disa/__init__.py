"""DiSA: diffusion-step annealing for continuous-token AR image models."""

from .plugin import DiSAConfig, DiSAPlugin

__all__ = ["DiSAConfig", "DiSAPlugin"]
