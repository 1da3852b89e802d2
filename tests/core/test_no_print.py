"""The library logs through ``logging`` and never calls ``print``: only the CLI (``mmeff/cli``) prints."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_print_calls_outside_the_cli() -> None:
    offenders = []
    for folder in ("mmeff", "plugins"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_relative_to(ROOT / "mmeff" / "cli"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"print() in library code (use logging.getLogger(__name__)): {offenders}"
