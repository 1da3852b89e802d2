"""Name -> reward class, so ReNO configs can say ``rewards={"hpsv2": 5.0, "clip": 0.01}``."""

from __future__ import annotations

import importlib
import re
from typing import Any

from .base import Reward

_REWARDS: dict[str, type[Reward]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: modules of the bundled rewards; imported on first lookup so ``import mmeff.rewards`` stays cheap
_BUNDLED = ("clip", "pickscore", "imagereward", "aesthetic")
_loaded = False


def register_reward(cls: type[Reward]) -> type[Reward]:
    """Class decorator: make ``cls`` available as ``get_reward(cls.name)``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"reward name {name!r} must be lowercase letters, digits and underscores")
    for attr in ("offset", "default_weight"):
        if not isinstance(getattr(cls, attr, None), (int, float)):
            raise ValueError(f"reward {name!r} must define a numeric class attribute {attr!r}")
    if name in _REWARDS and _REWARDS[name] is not cls:
        raise ValueError(f"a reward named {name!r} is already registered ({_REWARDS[name].__module__})")
    _REWARDS[name] = cls
    return cls


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUNDLED:
            importlib.import_module(f"{__package__}.{module}")


def list_rewards() -> list[str]:
    _ensure_loaded()
    return sorted(_REWARDS)


def get_reward(name: str) -> type[Reward]:
    _ensure_loaded()
    if name not in _REWARDS:
        raise KeyError(f"unknown reward {name!r}; available: {sorted(_REWARDS)}")
    return _REWARDS[name]


def load_reward(name: str, path: str | None = None, **kwargs: Any) -> Reward:
    """``get_reward(name).load(path, **kwargs)``: the released weights (or those at ``path``)."""
    return get_reward(name).load(path, **kwargs)


def parse_rewards(specs: list[str]) -> dict[str, float]:
    """Command-line reward lists: ``["shapes_clip", "clip:0.5"]`` -> ``{"shapes_clip": 1.0, "clip": 0.5}``."""
    out = {}
    for spec in specs:
        name, _, weight = spec.partition(":")
        try:
            out[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"reward {spec!r}: the weight after ':' must be a number (name[:weight])") from None
    return out
