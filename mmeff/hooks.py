"""Named, removable, stateful hooks on ``nn.Module``s.

The semantics follow diffusers' ``ModelHook``/``HookRegistry``: a module gets one
wrapper ``forward`` that runs a chain of hooks around the forward that was current when
the first hook was attached. The chain lives in ``module._mmeff_hooks`` so it coexists
with accelerate's ``_hf_hook`` and diffusers' ``_diffusers_hook``. When the last hook is
removed the exact previous ``forward`` is restored (or the instance attribute deleted, so
the class method is used again), unless something else wrapped ours in the meantime: then
our wrapper stays as a pass-through rather than clobbering the newer wrapper.
"""

from __future__ import annotations

import functools
from typing import Any

import torch.nn as nn

_ATTR = "_mmeff_hooks"
_MISSING = object()


class ModelHook:
    """One hook: override ``pre_forward`` (rewrite inputs) and/or ``post_forward`` (rewrite outputs)."""

    #: hooks that keep per-call state implement ``reset_state``
    stateful: bool = False

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        return output

    def reset_state(self, module: nn.Module) -> None:
        """Called at the start of every pipeline call for stateful hooks."""


class HookRegistry:
    """The ordered chain of named hooks on one module."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.hooks: dict[str, ModelHook] = {}
        self._saved_forward = module.__dict__.get("forward", _MISSING)
        self._original = module.forward
        self._wrapper = self._make_wrapper()
        module.forward = self._wrapper

    def _make_wrapper(self):
        original = self._original
        registry = self

        def forward(*args, **kwargs):
            hooks = list(registry.hooks.values())
            for hook in hooks:
                args, kwargs = hook.pre_forward(registry.module, args, kwargs)
            output = original(*args, **kwargs)
            for hook in reversed(hooks):
                output = hook.post_forward(registry.module, output)
            return output

        # keep the original signature visible (generate inspects forward's parameters)
        functools.update_wrapper(forward, original)
        return forward

    def installed(self) -> bool:
        """Is our wrapper still reachable from ``module.forward`` (directly or under other wrappers)?"""
        fn = self.module.forward
        while fn is not None:
            if fn is self._wrapper:
                return True
            fn = getattr(fn, "__wrapped__", None)
        return False

    def _reinstall(self) -> None:
        """Someone (accelerate, diffusers) restored a forward that dropped our wrapper: wrap again."""
        self._saved_forward = self.module.__dict__.get("forward", _MISSING)
        self._original = self.module.forward
        self._wrapper = self._make_wrapper()
        self.module.forward = self._wrapper

    def __deepcopy__(self, memo: dict) -> HookRegistry:
        # the copy's forward would still be our wrapper around the *original* module's forward
        raise TypeError(
            f"copy.deepcopy of a {type(self.module).__name__} with mmeff hooks attached would run the original "
            "model's weights; copy the model before wrapping it, or call pipe.remove_all_plugins() first"
        )

    @classmethod
    def get_or_create(cls, module: nn.Module) -> HookRegistry:
        registry = module.__dict__.get(_ATTR)
        if registry is None:
            registry = cls(module)
            module.__dict__[_ATTR] = registry
        elif not registry.installed():
            registry._reinstall()
        return registry

    @staticmethod
    def get(module: nn.Module) -> HookRegistry | None:
        return module.__dict__.get(_ATTR)

    def register(self, name: str, hook: ModelHook) -> ModelHook:
        if name in self.hooks:
            raise ValueError(f"a hook named {name!r} is already registered on {type(self.module).__name__}")
        self.hooks[name] = hook
        return hook

    def remove(self, name: str) -> None:
        if name not in self.hooks:
            raise KeyError(f"no hook named {name!r}; registered: {sorted(self.hooks)}")
        del self.hooks[name]
        if not self.hooks:
            self._unwrap()

    def _unwrap(self) -> None:
        if self.module.__dict__.get("forward") is not self._wrapper:
            if not self.installed():  # our wrapper is gone already: forget the registry
                del self.module.__dict__[_ATTR]
            return  # else something wrapped us later: stay as a pass-through
        if self._saved_forward is _MISSING:
            del self.module.forward
        else:
            self.module.forward = self._saved_forward
        del self.module.__dict__[_ATTR]


def add_hook(module: nn.Module, name: str, hook: ModelHook) -> ModelHook:
    """Attach ``hook`` to ``module`` under ``name`` (names are unique per module)."""
    return HookRegistry.get_or_create(module).register(name, hook)


def remove_hook(module: nn.Module, name: str) -> None:
    registry = HookRegistry.get(module)
    if registry is None:
        raise KeyError(f"{type(module).__name__} has no mmeff hooks")
    registry.remove(name)


def iter_hooks(root: nn.Module, prefix: str = ""):
    """Yield ``(module, name, hook)`` for every hook under ``root`` whose name starts with ``prefix``."""
    for module in root.modules():
        registry = HookRegistry.get(module)
        if registry is None:
            continue
        for name, hook in list(registry.hooks.items()):
            if name.startswith(prefix):
                yield module, name, hook


def remove_all(root: nn.Module, prefix: str) -> int:
    """Remove every hook under ``root`` whose name starts with ``prefix``; returns how many."""
    found = list(iter_hooks(root, prefix))
    for module, name, _ in reversed(found):
        remove_hook(module, name)
    return len(found)


def reset_stateful_hooks(root: nn.Module, prefix: str = "") -> None:
    for module, _, hook in iter_hooks(root, prefix):
        if hook.stateful:
            hook.reset_state(module)
