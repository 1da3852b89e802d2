"""mmeff: cheaper, more faithful multimodal inference through removable plugins."""

from .errors import ConfigError, InputError, MMEffError, UnsupportedModelError
from .pipeline import GenerationOutput, MMPipeline, load, wrap
from .plugin import Plugin, PluginConfig
from .registry import (
    list_adapters,
    list_plugins,
    register_adapter,
    register_plugin,
    support_matrix,
    supported,
)

__version__ = "0.1.0"
__all__ = [
    "ConfigError", "GenerationOutput", "InputError", "MMEffError", "MMPipeline", "Plugin", "PluginConfig",
    "UnsupportedModelError", "list_adapters", "list_plugins", "load", "register_adapter", "register_plugin",
    "support_matrix", "supported", "wrap",
]
