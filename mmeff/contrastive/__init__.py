"""Contrastive decoding against hallucination: one decode loop, many negative branches."""

from .decode import ContrastiveDecoder, DecodeResult, contrastive_generate
from .ops import add_ddpm_noise, contrast, plausible

__all__ = ["ContrastiveDecoder", "DecodeResult", "add_ddpm_noise", "contrast", "contrastive_generate", "plausible"]
