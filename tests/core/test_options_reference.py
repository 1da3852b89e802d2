"""docs/reference/options.md is generated from the config dataclasses; keep it in sync."""

import re
from pathlib import Path

from mmeff.options_doc import options_markdown

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "options.md"


def test_options_reference_matches_the_config_dataclasses() -> None:
    block = re.search(r"<!-- options:start -->\n(.*?)<!-- options:end -->", PAGE.read_text(), re.S)
    assert block, "docs/reference/options.md lost its options markers"
    assert block.group(1) == options_markdown(), (
        "the options reference is stale: paste the output of `mmeff list --options all --markdown`")
