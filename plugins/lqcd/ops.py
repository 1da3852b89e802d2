"""Deriving the leading form of a neutral query (LQCD's negative prompt)."""

from __future__ import annotations

import re

_EXISTENCE = re.compile(r"^\s*(is|are)\s+there\s+(.*?)[\s?.!]*$", re.IGNORECASE)


def leading_form(prompt: str, tag: str = "right?") -> str:
    """Turn a question into one that presupposes "yes": a statement plus a confirmation tag.

    "Is there a red circle in the image?" -> "there is a red circle in the image , right?";
    other questions keep their words and get the tag ("what color is the star, right?").
    """
    match = _EXISTENCE.match(prompt)
    if match:
        verb, rest = match.groups()
        return f"there {verb.lower()} {rest} , {tag}"
    return f"{prompt.strip().rstrip(' ?.!')} , {tag}"
