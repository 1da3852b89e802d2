"""Deriving the leading form of a neutral query (LQCD's negative prompt)."""

from __future__ import annotations

import re

_EXISTENCE = re.compile(r"^\s*(is|are)\s+there\s+(.*?)[\s?.!]*$", re.IGNORECASE)
#: questions answered by yes or no start with an auxiliary verb
_YES_NO = re.compile(r"^\s*(is|are|was|were|do|does|did|can|could|has|have|had|will|would|should|shall|may|might)"
                     r"(n't)?\b", re.IGNORECASE)
#: a comma-led confirmation tag at the end ("..., right?") makes a question leading already
_TAGGED = re.compile(r",\s*(right|correct|isn't it|aren't they|isn't there|aren't there)\s*\?\s*$", re.IGNORECASE)


def leading_form(prompt: str, tag: str = "right?") -> str | None:
    """The leading form of a yes/no question, which presupposes "yes"; None for any other prompt.

    "Is there a red circle in the image?" -> "there is a red circle in the image , right?";
    another yes/no question keeps its words and gets the tag ("is the star red , right?").
    Open questions ("what color is the star?") have no leading form, and a prompt that already
    ends in a confirmation tag (or ``tag``) is leading itself: both give None.
    """
    text = prompt.strip()
    own_tag = re.search(r",\s*" + re.escape(tag.strip()) + r"\s*$", text, re.IGNORECASE)
    if _TAGGED.search(text) or own_tag or not _YES_NO.match(text):
        return None
    match = _EXISTENCE.match(text)
    if match:
        verb, rest = match.groups()
        return f"there {verb.lower()} {rest} , {tag}"
    return f"{text.rstrip(' ?.!')} , {tag}"
