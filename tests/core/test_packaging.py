"""Packaging: every core requirement is used by mmeff's own code, optional ones stay behind extras,
and the package ships ``py.typed``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
# distributions whose import name differs, and the ones used only through another library
MODULES = {"opencv-python-headless": "cv2", "pillow": "PIL", "open_clip_torch": "open_clip"}
USED_THROUGH = {"torchvision": "transformers' fast image processors import it"}


def _imports() -> set[str]:
    found = set()
    for folder in ("mmeff", "plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_core_requirement_is_imported_by_mmeff() -> None:
    imported = _imports()
    unused = []
    for requirement in _project()["dependencies"]:
        name = re.split(r"[<>=!~\[ ]", requirement)[0]
        if name in USED_THROUGH:
            continue
        if MODULES.get(name, name.replace("-", "_")) not in imported:
            unused.append(name)
    assert not unused, f"core requirements with no import in mmeff/ or plugins/: {unused}"


def test_optional_packages_are_extras_not_requirements() -> None:
    project = _project()
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    assert {"dev", "eval", "rewards", "app", "docs"} <= set(extras)
    for package in ("open_clip_torch", "gradio", "lmms-eval", "mkdocs", "playwright"):
        assert package not in core and any(package in " ".join(v) for v in extras.values()), package


def test_py_typed_ships() -> None:
    assert (ROOT / "mmeff" / "py.typed").is_file()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["mmeff"]
    packages = set(setuptools["packages"])
    on_disk = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "mmeff").rglob("__init__.py")}
    assert on_disk <= packages, f"packages missing from pyproject: {sorted(on_disk - packages)}"
