"""The ``plugins=`` model argument: a plugin stack written ``name[:key=value,...]`` and joined by ``;``."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..plugin_spec import check_stack, did_you_mean, parse_plugin_spec
from ..registry import list_plugins


def parse_plugin_stack(text: str | None) -> list[tuple[str, dict[str, Any]]]:
    """``"pyramid_drop;vcd:alpha=1.0,beta=0.1"`` -> ``[("pyramid_drop", {}), ("vcd", {...})]``.

    Names and option keys are checked here, before any model loads, so a typo fails at once
    with the allowed names or options instead of after minutes of loading.
    """
    text = (text or "").strip().strip("\"'")
    stack = [parse_plugin_spec(part) for part in text.split(";") if part.strip()]
    for name, _ in stack:
        if name not in list_plugins():
            raise ConfigError(f"unknown plugin {name!r} in plugins={text!r}.{did_you_mean(name, list_plugins())} "
                              f"available: {list_plugins()}")
    return check_stack(stack)
