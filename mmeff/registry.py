"""Name-keyed registries for plugins and adapters (in the manner of timm/PEFT)."""

from __future__ import annotations

import fnmatch
import importlib
import re
from typing import TYPE_CHECKING, Any

from .errors import UnknownPluginError, UnsupportedModelError

if TYPE_CHECKING:
    from .adapters.base import Adapter
    from .plugin import Plugin

_PLUGINS: dict[str, type[Plugin]] = {}
_ADAPTERS: dict[str, type[Adapter]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_loaded = False


def _check_name(kind: str, name: str, table: dict) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r} must be lowercase letters, digits and underscores")
    if name in table:
        raise ValueError(f"a {kind} named {name!r} is already registered ({table[name].__module__})")


def register_plugin(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: make ``cls`` available as ``add_plugin(cls.name)``."""
    _ensure_loaded()  # so a clash with a bundled name is caught here, not later
    _check_name("plugin", cls.name, _PLUGINS)
    _PLUGINS[cls.name] = cls
    return cls


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    _ensure_loaded()
    _check_name("adapter", cls.key, _ADAPTERS)
    _ADAPTERS[cls.key] = cls
    return cls


def _ensure_loaded() -> None:
    """Import the bundled adapters and plugins once, so their registrations run."""
    global _loaded
    if not _loaded:
        _loaded = True
        importlib.import_module("mmeff.adapters")
        importlib.import_module("mmeff.plugins")


def list_plugins(pattern: str = "*") -> list[str]:
    _ensure_loaded()
    return sorted(n for n in _PLUGINS if fnmatch.fnmatch(n, pattern))


def list_adapters(pattern: str = "*") -> list[str]:
    _ensure_loaded()
    return sorted(k for k in _ADAPTERS if fnmatch.fnmatch(k, pattern))


def get_plugin(name: str) -> type[Plugin]:
    _ensure_loaded()
    if name not in _PLUGINS:
        from .plugin_spec import did_you_mean

        close = fnmatch.filter(_PLUGINS, f"*{name}*") if isinstance(name, str) else []
        hint = f" Did you mean {close}?" if len(close) > 1 else did_you_mean(close[0] if close else name, _PLUGINS)
        raise UnknownPluginError(f"unknown plugin {name!r}.{hint} Available: {sorted(_PLUGINS)}")
    return _PLUGINS[name]


def get_adapter(key: str) -> type[Adapter]:
    _ensure_loaded()
    if key not in _ADAPTERS:
        raise KeyError(f"unknown adapter {key!r}; available: {sorted(_ADAPTERS)}")
    return _ADAPTERS[key]


def find_adapter(obj: Any) -> type[Adapter]:
    """The adapter whose ``matches`` accepts ``obj`` (a model or a diffusers pipeline)."""
    _ensure_loaded()
    for cls in _ADAPTERS.values():
        if cls.matches(obj):
            return cls
    raise UnsupportedModelError(
        f"no mmeff adapter for {type(obj).__name__}; supported model families: {sorted(_ADAPTERS)}"
    )


def supported(plugin: str, adapter_key: str) -> bool:
    return any(fnmatch.fnmatch(adapter_key, p) for p in get_plugin(plugin).supports)


def supported_adapters(plugin: str) -> list[str]:
    return [a for a in list_adapters() if supported(plugin, a)]


def support_matrix() -> dict[str, dict[str, bool]]:
    """``{plugin: {adapter: supported}}`` for every registered pair."""
    return {p: {a: supported(p, a) for a in list_adapters()} for p in list_plugins()}


def refusal(plugin: str, adapter_key: str) -> str | None:
    """Why ``plugin`` is not offered on ``adapter_key`` models, where a reason is recorded: the plugin's
    own, else (for a vision-side method) the adapter's ``vision_side_refusal``."""
    cls = get_plugin(plugin)
    reason = cls.refused.get(adapter_key)
    if reason is None and "vision" in cls.owns and not supported(plugin, adapter_key):
        reason = getattr(get_adapter(adapter_key), "vision_side_refusal", None)
    return reason


def support_cell(plugin: str, adapter_key: str) -> str:
    """✓ supported, ✗ refused for a recorded reason, blank: outside the plugin's family."""
    return "✓" if supported(plugin, adapter_key) else "✗" if refusal(plugin, adapter_key) else ""


def support_matrix_markdown() -> str:
    adapters = list_adapters()
    lines = ["| plugin | " + " | ".join(adapters) + " |", "|---|" + "---|" * len(adapters)]
    reasons = []
    for plugin in list_plugins():
        lines.append(f"| {plugin} | " + " | ".join(support_cell(plugin, a) for a in adapters) + " |")
        refused = [a for a in adapters if support_cell(plugin, a) == "✗"]
        reasons += [f"- ✗ `{plugin}` on `{a}`: {refusal(plugin, a)}" for a in refused]
        notes = get_plugin(plugin).notes
        reasons += [f"- ✓ `{plugin}` on `{a}`, partly: {notes[a]}" for a in adapters if a in notes]
    return "\n".join(lines + ([""] + reasons if reasons else []))
