"""Continuous speculative decoding with a draft model of the same continuous-token family."""

from .plugin import ContinuousSpecConfig, ContinuousSpecPlugin

__all__ = ["ContinuousSpecConfig", "ContinuousSpecPlugin"]
