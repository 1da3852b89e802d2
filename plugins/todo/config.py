"""ToDo's options; the defaults are the release's ``patch_attention_proc`` (ethansmith2000/ImprovedTokenMerge)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig

from .ops import INTERPOLATIONS, POOLS

SECONDARY = ("similarity", "downsample", "none")


@dataclass
class ToDoConfig(PluginConfig):
    """Keys and values of self-attention are downsampled by ``downsample_factor`` on the highest-resolution
    blocks (``downsample_factor_level_2`` on the next level); queries keep every token, so nothing is unmerged.

    While ``timestep / 1000 > timestep_threshold_switch`` the keys/values are downsampled; below it the
    ``secondary_merge_method`` runs ("similarity": ToMe's bipartite merge of the keys/values, at ``ratio``
    / ``ratio_level_2``; "none": plain attention). Below ``timestep_threshold_stop`` nothing is changed.
    """

    downsample_factor: int = field(default=2, metadata={
        "help": "keys/values downsampling per grid side on the highest-resolution blocks, >= 1 (1: off)"})
    downsample_factor_level_2: int = field(default=1, metadata={
        "help": "the same on blocks at half the input grid's resolution, >= 1 (1: off)"})
    downsample_method: str = field(default="nearest-exact", metadata={
        "help": "nearest, nearest-exact, bilinear, bicubic, area (interpolation), avg_pool or max_pool"})
    timestep_threshold_switch: float = field(default=0.2, metadata={
        "help": "in [0, 1): downsample while timestep / 1000 > this, below it secondary_merge_method"})
    timestep_threshold_stop: float = field(default=0.0, metadata={
        "help": "in [0, 1): attention is left unchanged once timestep / 1000 <= this"})
    secondary_merge_method: str = field(default="similarity", metadata={
        "help": "late in sampling: \"similarity\" (ToMe-merge the keys/values), \"downsample\" or \"none\""})
    ratio: float = field(default=0.5, metadata={
        "help": "in [0, 1): share of keys/values the similarity merge removes on the highest-resolution blocks"})
    ratio_level_2: float = field(default=0.5, metadata={"help": "in [0, 1): the same on blocks at half resolution"})
    sx: int = field(default=2, metadata={
        "help": "similarity merge: cell width in tokens, >= 1 (one destination per sx x sy cell)"})
    sy: int = field(default=2, metadata={"help": "similarity merge: cell height in tokens, >= 1"})
    use_rand: bool = field(default=True, metadata={
        "help": "random destination per cell and call (off for odd batches); False: each cell's top-left token"})
    seed: int | None = field(default=None, metadata={
        "help": "seed of the destination draws, re-seeded each call; None = forked from torch's global RNG"})

    def validate(self) -> None:
        for name in ("downsample_factor", "downsample_factor_level_2", "sx", "sy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"todo {name} must be an int >= 1, got {value!r}")
        if self.downsample_method not in INTERPOLATIONS + POOLS:
            raise ConfigError(f"todo downsample_method must be one of {list(INTERPOLATIONS + POOLS)}, "
                              f"got {self.downsample_method!r}")
        if self.secondary_merge_method not in SECONDARY:
            raise ConfigError(f"todo secondary_merge_method must be one of {list(SECONDARY)}, "
                              f"got {self.secondary_merge_method!r}")
        for name in ("timestep_threshold_switch", "timestep_threshold_stop", "ratio", "ratio_level_2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"todo {name} must be a number in [0, 1), got {value!r}")
        if not isinstance(self.use_rand, bool):
            raise ConfigError(f"todo use_rand must be True or False, got {self.use_rand!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"todo seed must be an int or None, got {self.seed!r}")
