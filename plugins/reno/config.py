"""ReNO's options; the defaults are the released code's (``arguments.py``, ``training/optim.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig

#: the paper's reward mix, the same for every model in the released code
PAPER_REWARDS = {"hpsv2": 5.0, "imagereward": 1.0, "clip": 0.01, "pickscore": 0.05}
SEARCHES = ("gradient", "random")
PRECISIONS = ("pipeline", "bf16", "fp16")


@dataclass
class RenoConfig(PluginConfig):
    """``rewards`` maps reward names to weights (None: the paper's four). ``reward_paths`` says where to
    load a reward from (hub id or folder); ``reward_models`` passes already-built
    :class:`mmeff.rewards.Reward` modules by name instead (custom or tiny rewards).

    ``precision="bf16"``/``"fp16"`` runs the differentiable path under autocast (memory and speed
    on GPUs) while the noise itself is optimised in fp32; ``"pipeline"`` uses the pipeline's dtype.
    ``iterations`` counts reward evaluations; iteration 0 is the unoptimised noise, so 50
    iterations make 49 updates, as released. ``search="random"`` is the best-of-N control at
    equal compute: ``iterations`` noises, the one with the best reward kept.
    """

    rewards: dict[str, float] | None = field(default=None, metadata={
        "help": "reward name -> weight >= 0 (one > 0); None = the paper's hpsv2/imagereward/clip/pickscore mix"})
    reward_paths: dict[str, str] = field(default_factory=dict, metadata={
        "help": "reward name -> hub id or folder to load it from (unnamed rewards: their released weights)"})
    reward_models: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "reward name -> already-built mmeff.rewards.Reward module, used instead of loading one"})
    iterations: int = field(default=50, metadata={
        "help": "reward evaluations per image, >= 0; iteration 0 is the initial noise (50: 49 updates, as released)"})
    lr: float = field(default=5.0, metadata={"help": "SGD learning rate on the noise, > 0"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum, in [0, 1)"})
    nesterov: bool = field(default=True, metadata={"help": "Nesterov momentum in the SGD step (needs momentum > 0)"})
    grad_clip: float = field(default=0.1, metadata={"help": "> 0: each image's noise gradient is clipped to this norm"})
    reg_weight: float = field(default=0.01, metadata={
        "help": ">= 0: weight of the regulariser keeping the noise norm where Gaussian noise lives"})
    reward_target: float | None = field(default=None, metadata={
        "help": "stop once every image's weighted reward reaches this; None = run all iterations"})
    search: str = field(default="gradient", metadata={
        "help": "\"gradient\" (ReNO) or \"random\" (best-of-N control: fresh noises, the best kept)"})
    seed: int | None = field(default=None, metadata={
        "help": "seeds a generator for calls that pass none; None = seeded from torch's global RNG"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "gradient checkpointing in the denoiser and VAE where they support it (less memory, slower)"})
    precision: str = field(default="pipeline", metadata={
        "help": "differentiable path in the pipeline's dtype, or under \"bf16\"/\"fp16\" autocast; noise stays fp32"})
    decode_chunk: int | None = field(default=None, metadata={
        "help": "VAE-decode this many images at a time (peak memory), >= 1; None = the whole batch"})
    progress: bool = field(default=False, metadata={"help": "show a progress bar over the iterations"})

    def validate(self) -> None:
        for name, kind in (("rewards", "reward name -> weight, e.g. {'clip': 1.0, 'aesthetic': 0.5}"),
                           ("reward_paths", "reward name -> checkpoint folder"),
                           ("reward_models", "reward name -> mmeff.rewards.Reward module")):
            value = getattr(self, name)
            if not (value is None and name == "rewards") and not isinstance(value, dict):
                raise ConfigError(f"{name} must be a dict of {kind}; got a {type(value).__name__}")
        for name, model in self.reward_models.items():
            if not isinstance(model, nn.Module):
                raise ConfigError(f"reward_models[{name!r}] must be a torch module (an mmeff.rewards.Reward), "
                                  f"got a {type(model).__name__}")
        weights = self.weights
        if not weights:
            raise ConfigError("rewards must name at least one reward, e.g. {'clip': 1.0}")
        for name, w in weights.items():
            if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
                raise ConfigError(f"reward weight for {name!r} must be a number >= 0, got {w!r}")
        if not any(w > 0 for w in weights.values()):
            raise ConfigError(f"at least one reward weight must be > 0, got {weights}")
        unknown = sorted((set(self.reward_paths) | set(self.reward_models)) - set(weights))
        if unknown:
            raise ConfigError(f"reward_paths/reward_models name rewards not in rewards: {unknown}; rewards: "
                              f"{sorted(weights)}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise ConfigError(f"iterations must be an int >= 0, got {self.iterations!r}")
        for name in ("lr", "grad_clip", "momentum", "reg_weight"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, float)):
                raise ConfigError(f"{name} must be a number, got {getattr(self, name)!r}")
        if self.reward_target is not None and not isinstance(self.reward_target, (int, float)):
            raise ConfigError(f"reward_target must be a number or None, got {self.reward_target!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be an int or None, got {self.seed!r}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs momentum > 0 (torch's SGD rule)")
        if self.reg_weight < 0:
            raise ConfigError(f"reg_weight must be >= 0, got {self.reg_weight!r}")
        if self.search not in SEARCHES:
            raise ConfigError(f"search must be one of {SEARCHES}, got {self.search!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.decode_chunk is not None and (not isinstance(self.decode_chunk, int) or self.decode_chunk < 1):
            raise ConfigError(f"decode_chunk must be a positive int or None, got {self.decode_chunk!r}")

    @property
    def weights(self) -> dict[str, float]:
        return dict(PAPER_REWARDS if self.rewards is None else self.rewards)
