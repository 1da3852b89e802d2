"""Every plugin's options, read off its config dataclass: ``mmeff list --options NAME`` and the docs'
reference page print the same rows (name, type, default, help), so neither can drift from the code."""

from __future__ import annotations

import dataclasses
from typing import Any

from . import registry


def option_rows(plugin: str) -> list[dict[str, str]]:
    """``[{"option", "type", "default", "help"}, ...]`` in field order."""
    rows = []
    for f in dataclasses.fields(registry.get_plugin(plugin).config_cls):
        rows.append({"option": f.name, "type": _type_name(f.type), "default": _default(f),
                     "help": str(f.metadata.get("help", ""))})
    return rows


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(f.default_factory())  # type: ignore[misc]
    return "(required)"


def options_markdown(plugins: list[str] | None = None) -> str:
    """One section per plugin: its description and a table of its options."""
    out = []
    for name in plugins or registry.list_plugins():
        cls = registry.get_plugin(name)
        out += [f"## `{name}`", "", cls.description, "", f"`{cls.config_cls.__name__}`:", "",
                "| option | type | default | what it does |", "|---|---|---|---|"]
        for row in option_rows(name):
            cells = [f"`{row['option']}`", f"`{row['type']}`", f"`{row['default']}`", row["help"]]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
