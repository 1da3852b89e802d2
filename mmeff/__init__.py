"""mmeff: cheaper, more faithful multimodal inference through removable plugins.

The public names load on first use (PEP 562), so ``import mmeff`` and ``mmeff --help`` stay quick;
``mmeff.load``, ``mmeff.wrap`` and the rest import torch and transformers when first touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, InputError, MMEffError, UnsupportedModelError

if TYPE_CHECKING:
    from .pipeline import GenerationOutput, MMPipeline, load, wrap
    from .plugin import Plugin, PluginConfig
    from .registry import list_adapters, list_plugins, register_adapter, register_plugin, support_matrix, supported

__version__ = "0.1.0"
_LAZY = {
    "GenerationOutput": "pipeline", "MMPipeline": "pipeline", "load": "pipeline", "wrap": "pipeline",
    "Plugin": "plugin", "PluginConfig": "plugin",
    "list_adapters": "registry", "list_plugins": "registry", "register_adapter": "registry",
    "register_plugin": "registry", "support_matrix": "registry", "supported": "registry",
}
__all__ = [
    "ConfigError", "GenerationOutput", "InputError", "MMEffError", "MMPipeline", "Plugin", "PluginConfig",
    "UnsupportedModelError", "list_adapters", "list_plugins", "load", "register_adapter", "register_plugin",
    "support_matrix", "supported", "wrap",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        try:  # a submodule used as an attribute (mmeff.registry) before anything imported it
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'mmeff' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
