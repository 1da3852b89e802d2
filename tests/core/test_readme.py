"""The README's support matrix is generated from the registry; keep it in sync."""

import re
from pathlib import Path

from mmeff.registry import support_matrix_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_support_matrix_matches_registry():
    text = README.read_text()
    block = re.search(r"<!-- support-matrix:start -->\n(.*?)\n<!-- support-matrix:end -->", text, re.S)
    assert block, "README lost its support-matrix markers"
    assert block.group(1).strip() == support_matrix_markdown().strip(), (
        "README support matrix is stale: paste the output of `mmeff list --markdown`"
    )


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
