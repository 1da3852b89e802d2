"""Every fenced code block in README.md and docs/ (except the generated docs/results/) is checked.

- ```python blocks run, each page's blocks in order in one namespace, in a subprocess with the repo root
  as working directory and the hub switched off (bundled models in assets/models/ or tiny ones from
  ``mmeff.testing``).
- ```bash blocks: every line that starts with ``mmeff `` (after joining ``\\`` continuations) is parsed
  by the real command-line parser, and ``mmeff list ...`` lines also run (the others load models or run
  for minutes: parse only); other lines (pip, make, python -m lmms_eval,
  accelerate ...) are not run.
- ```text blocks are illustrative output and are not run.

Any other info string (or none) fails, so an example cannot slip through unchecked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = ("python", "bash", "text")
PYTHON_TIMEOUT_S = 300


@dataclass
class Block:
    page: str  # path relative to the repo root
    line: int  # 1-based line of the opening fence
    lang: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    docs = ROOT / "docs"
    found = [ROOT / "README.md"]
    found += sorted(p for p in docs.rglob("*.md") if (docs / "results") not in p.parents)
    return found


_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<info>.*)$")


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file (fences may be indented inside list items)."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    rel = str(path.relative_to(ROOT))
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group("indent"), m.group("fence"), m.group("info").strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if close and close.group("fence").startswith(fence[0]) and len(close.group("fence")) >= len(fence) \
                    and not close.group("info").strip():
                break
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        else:
            raise AssertionError(f"{rel}:{start + 1}: unclosed code fence")
        lang = info.split()[0] if info else ""
        found.append(Block(rel, start + 1, lang, textwrap.dedent("\n".join(body)) + "\n"))
        i += 1
    return found


ALL_BLOCKS = [b for p in pages() for b in blocks(p)]
PYTHON_PAGES = sorted({b.page for b in ALL_BLOCKS if b.lang == "python"})


def mmeff_lines() -> list[tuple[str, str]]:
    """(where, command line) for every ``mmeff ...`` line of the bash blocks."""
    found = []
    for b in ALL_BLOCKS:
        if b.lang != "bash":
            continue
        logical: list[tuple[int, str]] = []
        pending, first = "", 0
        for n, raw in enumerate(b.code.splitlines()):
            if not pending:
                first = n
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            logical.append((first, pending + raw))
            pending = ""
        if pending:
            logical.append((first, pending))
        for n, line in logical:
            line = line.strip()
            if line.startswith("mmeff "):
                found.append((f"{b.page}:{b.line + 1 + n}", line))
    return found


MMEFF_LINES = mmeff_lines()


def test_blocks_were_found():
    assert any(b.page == "README.md" and b.lang == "python" for b in ALL_BLOCKS), "README lost its quickstart"
    assert MMEFF_LINES, "no mmeff command lines found in any bash block"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.where)
def test_block_is_labelled(block: Block):
    assert block.lang in LANGUAGES, (
        f"{block.where}: code block with info string {block.lang!r}; use python (run), bash (mmeff lines "
        f"parsed) or text (illustrative output only)"
    )


@pytest.mark.parametrize("where,line", MMEFF_LINES, ids=[w for w, _ in MMEFF_LINES])
def test_mmeff_command_parses(where: str, line: str):
    from mmeff.cli import build_parser

    argv = shlex.split(line, comments=True)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on an error (code 2) and on --help (code 0)
        pytest.fail(f"{where}: `{line}` does not parse with mmeff's CLI (exit {exc.code})")
    if args.command == "list":  # quick: run it for real (the others load models or run for minutes)
        out = subprocess.run([sys.executable, "-m", "mmeff.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and out.stdout.strip(), f"{where}: `{line}` failed:\n{out.stderr[-2000:]}"


_RUNNER = r"""
import json, sys, time, traceback
blocks = json.loads(sys.stdin.read())
namespace = {"__name__": "__main__"}
for where, code in blocks:
    t0 = time.perf_counter()
    try:
        exec(compile(code, where, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED-BLOCK {where}", file=sys.stderr)
        sys.exit(1)
    print(f"block {where}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
"""


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_blocks_run(page: str, tmp_path: Path):
    code = [(b.where, b.code) for b in ALL_BLOCKS if b.page == page and b.lang == "python"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "MPLBACKEND": "Agg", "TQDM_DISABLE": "1", "MMEFF_DOCS_TMP": str(tmp_path)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(code), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=PYTHON_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, (
        f"a python block of {page} failed ({elapsed:.0f} s):\n{proc.stderr[-6000:]}\n{proc.stdout[-2000:]}"
    )
