"""ToMe-SD's options; the defaults are ``tomesd.apply_patch``'s (tomesd 0.1.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig

DOWNSAMPLES = (1, 2, 4, 8)


@dataclass
class ToMeSDConfig(PluginConfig):
    """``ratio`` of a block's image tokens merged away (at most ``1 - 1/(sx*sy)`` can go: the sources).

    Blocks whose token grid is at most ``max_downsample`` times coarser than the denoiser's input
    grid merge (1: the highest-resolution blocks only). ``use_rand`` picks each cell's destination
    at random per block call (off for odd batches, as released); ``seed`` fixes those draws per call
    (None: forked from torch's global RNG when first needed, as ``tomesd`` does).
    """

    ratio: float = field(default=0.5, metadata={
        "help": "share of a block's image tokens merged away, in [0, 1) (at most 1 - 1/(sx*sy) can go)"})
    max_downsample: int = field(default=1, metadata={
        "help": "1, 2, 4 or 8: merge in blocks at most this much coarser than the input grid (1: finest only)"})
    sx: int = field(default=2, metadata={"help": "cell width in tokens, >= 1; one destination per sx x sy cell"})
    sy: int = field(default=2, metadata={"help": "cell height in tokens, >= 1 (sx * sy >= 2)"})
    use_rand: bool = field(default=True, metadata={
        "help": "random destination per cell and block call (off for odd batches, as released); False: top-left"})
    merge_attn: bool = field(default=True, metadata={"help": "merge the tokens around self-attention (attn1)"})
    merge_crossattn: bool = field(default=False, metadata={"help": "merge the tokens around cross-attention (attn2)"})
    merge_mlp: bool = field(default=False, metadata={"help": "merge the tokens around the feed-forward (ff)"})
    seed: int | None = field(default=None, metadata={
        "help": "seed of the destination draws, re-seeded each call; None = forked from torch's global RNG"})

    def validate(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio < 1:
            raise ConfigError(f"tome_sd ratio must be a number in [0, 1), got {self.ratio!r}")
        if self.max_downsample not in DOWNSAMPLES:
            raise ConfigError(f"tome_sd max_downsample must be one of {DOWNSAMPLES}, got {self.max_downsample!r}")
        for name in ("sx", "sy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"tome_sd {name} must be an int >= 1, got {value!r}")
        if self.sx * self.sy < 2:
            raise ConfigError("tome_sd needs sx * sy >= 2: with one token per cell nothing is left to merge")
        for name in ("use_rand", "merge_attn", "merge_crossattn", "merge_mlp"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"tome_sd {name} must be True or False, got {getattr(self, name)!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"tome_sd seed must be an int or None, got {self.seed!r}")
