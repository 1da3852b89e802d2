"""Plugin base class and config dataclass base.

A plugin is a config (validated dataclass) plus an object that attaches named hooks to
a wrapped model through a :class:`PluginContext` and removes them again.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch.nn as nn

from . import hooks as _hooks
from .errors import ConfigError

if TYPE_CHECKING:
    from .adapters.base import Adapter


@dataclass
class PluginConfig:
    """Base of every plugin config: subclasses add fields and override :meth:`validate`."""

    def __post_init__(self) -> None:
        self._check_numbers()
        self.validate()

    def _check_numbers(self) -> None:
        """NumPy scalars become Python numbers; NaN and infinity are refused everywhere (no option uses them,
        and a NaN weight silently empties answers or searches)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.generic):
                value = value.item()
                setattr(self, f.name, value)
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in items):
                raise ConfigError(f"{type(self).__name__}.{f.name} must be finite, got {value!r}")

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the allowed values."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> PluginConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            from .plugin_spec import did_you_mean

            hint = did_you_mean(unknown[0], names) if len(unknown) == 1 else ""
            raise ConfigError(f"{cls.__name__} got unknown option(s) {unknown};{hint} allowed: {sorted(names)}")
        return cls(**kwargs)


@dataclass
class PluginContext:
    """What a plugin may touch: the wrapped model (through its adapter) and a hook namespace."""

    roots: list[nn.Module]
    adapter: Adapter
    namespace: str

    def add_hook(self, module: nn.Module, name: str, hook: _hooks.ModelHook) -> _hooks.ModelHook:
        return _hooks.add_hook(module, f"{self.namespace}/{name}", hook)

    def remove_hooks(self) -> int:
        return sum(_hooks.remove_all(root, f"{self.namespace}/") for root in self.roots)


class Plugin:
    """Base class. Subclasses set the class variables and implement :meth:`attach`."""

    name: ClassVar[str]
    config_cls: ClassVar[type[PluginConfig]]
    #: fnmatch patterns over adapter keys, e.g. ``("llava", "llava_next")``
    supports: ClassVar[tuple[str, ...]]
    #: the stages this plugin takes over ("vision", "prefill", "decode" for token reduction,
    #: "decode_loop" for contrastive decoding, "initial_noise" for noise-optimising T2I plugins,
    #: "image_decode_loop" for plugins that take over autoregressive image-token decoding);
    #: two plugins that own the same stage are refused at ``add_plugin``
    owns: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    #: adapter key -> why this plugin is not offered there (shown by ``mmeff list`` and in add_plugin's error)
    refused: ClassVar[dict[str, str]] = {}
    #: adapter key -> what runs differently there (a supported pair with stages off); shown by ``mmeff list``
    notes: ClassVar[dict[str, str]] = {}

    def __init__(self, config: PluginConfig) -> None:
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"{self.name} expects a {self.config_cls.__name__}, got {type(config).__name__}")
        self.config = config
        self.ctx: PluginContext | None = None

    def owned_stages(self) -> tuple[str, ...]:
        """The stages this instance takes over (configs may switch some off)."""
        return self.owns

    def check(self, ctx: PluginContext) -> None:
        """Raise before anything is attached if the model cannot run this plugin."""

    def attach(self, ctx: PluginContext) -> None:
        raise NotImplementedError

    def detach(self, ctx: PluginContext) -> None:
        ctx.remove_hooks()

    def reset(self) -> None:
        """Forget per-call state; the pipeline calls this at the start of every call."""

    def stats(self) -> dict[str, Any]:
        """What the last call did (tokens kept, passes saved, ...)."""
        return {}

    def prepare_generate(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str],
                         kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """VLMs: rewrite the model inputs and ``generate`` keywords of one ``pipe.generate`` call."""
        return inputs, kwargs

    def pre_call(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Diffusers pipelines: rewrite the call's keyword arguments (e.g. inject ``latents``)."""
        return kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
