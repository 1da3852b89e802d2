"""Exceptions with messages that say what is allowed."""


class MMEffError(Exception):
    """Base class of every error mmeff raises on purpose."""


class ConfigError(MMEffError, ValueError):
    """A plugin config value is out of its allowed range."""


class UnsupportedModelError(MMEffError, ValueError):
    """No adapter for this model, or a plugin that does not support the model's adapter."""


class InputError(MMEffError, ValueError):
    """Inputs to ``generate``/``__call__`` are inconsistent (counts, sizes, empty prompts)."""


class UnknownPluginError(ConfigError, KeyError):
    """No plugin of that name is registered (a ``KeyError`` too, as a registry lookup)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""
