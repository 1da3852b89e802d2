"""Plugin stacks as people write them: ``name:key=value,key=value`` on command lines, JSON, and
versioned stack files (``pipe.save_plugins`` / ``mmeff.load(..., plugins=...)``).

Everything here is checked before a model loads, so a misspelt plugin or option fails at once,
naming what is allowed and the closest match.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError

STACK_FORMAT = "mmeff-plugin-stack"
STACK_VERSION = 1
PluginStack = list[tuple[str, dict[str, Any]]]


def did_you_mean(word: str, allowed: list[str] | tuple[str, ...] | set[str]) -> str:
    """`` Did you mean 'fastv'?`` when ``word`` is close to one of ``allowed``, else ``""``."""
    close = difflib.get_close_matches(str(word), sorted(allowed), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def parse_plugin_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """One plugin: ``"vcd"``, ``"vcd:alpha=1.0,beta=0.1"``, ``'vcd:{"alpha": 1.0}'`` or
    ``'{"name": "vcd", "alpha": 1.0}'`` -> ``("vcd", {"alpha": 1.0, ...})``. Values are Python/JSON
    literals where they parse (``64``, ``0.5``, ``(2, 4)``, ``true``), else strings (``budget=1/9``)."""
    text = spec.strip()
    if text.startswith("{"):
        options = _json_object(text, spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"a JSON plugin spec needs a \"name\" string: {spec!r}")
        return name, options
    name, _, rest = text.partition(":")
    if not name.strip():
        raise ConfigError(f"a plugin spec starts with the plugin's name, as in fastv:budget=64; got {spec!r}")
    if not re.fullmatch(r"[A-Za-z][\w.-]*", name.strip()):
        raise ConfigError(f"{name.strip()!r} is not a plugin name; a plugin spec looks like fastv:budget=64")
    rest = rest.strip()
    if rest.startswith("{"):
        return name.strip(), _json_object(rest, spec)
    options: dict[str, Any] = {}
    for item in filter(None, re.split(r",(?=\s*\w+\s*=)", rest)):  # commas inside (2, 4) stay
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"plugin option {item!r} in {spec!r} must look like key=value")
        options[key.strip()] = _literal(value.strip())
    return name.strip(), options


def _literal(value: str) -> Any:
    lowered = {"true": True, "false": False, "null": None, "none": None}
    if value.lower() in lowered:
        return lowered[value.lower()]
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _json_object(text: str, spec: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"plugin spec {spec!r} is not valid JSON: {err.msg} at character {err.pos}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"a JSON plugin spec is an object of options, got {type(value).__name__}: {spec!r}")
    return value


def check_stack(stack: PluginStack) -> PluginStack:
    """Every name registered, every option known and valid, no plugin twice; returns ``stack``."""
    from .registry import get_plugin

    names = [name for name, _ in stack]
    for name, options in stack:
        get_plugin(name).config_cls.from_kwargs(**options)  # unknown names/options and bad values raise
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"the plugin stack names {twice} more than once; give each plugin once")
    return stack


def parse_plugin_args(specs: list[str] | None, stack_file: str | None = None) -> PluginStack:
    """``--plugins FILE`` then each ``--plugin SPEC``, checked."""
    stack = load_plugin_stack(stack_file) if stack_file else []
    return check_stack(stack + [parse_plugin_spec(s) for s in specs or []])


def as_stack(value: str | Path | list[Any]) -> PluginStack:
    """A stack file's path, a list of specs (``"fastv:budget=64"``) or of ``(name, options)`` pairs, checked."""
    if isinstance(value, (str, Path)):
        return load_plugin_stack(value)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"plugins takes a stack file's path or a list of plugin specs, got {type(value).__name__}")
    return check_stack([parse_plugin_spec(e) if isinstance(e, str) else (e[0], dict(e[1])) for e in value])


def stack_document(stack: PluginStack) -> dict[str, Any]:
    return {"format": STACK_FORMAT, "version": STACK_VERSION,
            "plugins": [{"name": name, "options": options} for name, options in stack]}


def load_plugin_stack(path: str | Path) -> PluginStack:
    """A stack file written by ``pipe.save_plugins``: checked for format, version, names and options."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no plugin stack file at {str(path)!r}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not a plugin stack: invalid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != STACK_FORMAT:
        raise ConfigError(f"{path} is not a plugin stack: it needs \"format\": {STACK_FORMAT!r} "
                          "(write one with pipe.save_plugins)")
    if doc.get("version") != STACK_VERSION:
        raise ConfigError(f"{path} is a version {doc.get('version')!r} plugin stack; this mmeff reads version "
                          f"{STACK_VERSION}")
    entries = doc.get("plugins")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                and isinstance(e.get("options", {}), dict) for e in entries):
        raise ConfigError(f"{path}: \"plugins\" must be a list of {{\"name\": str, \"options\": {{...}}}}")
    return check_stack([(e["name"], dict(e.get("options", {}))) for e in entries])
