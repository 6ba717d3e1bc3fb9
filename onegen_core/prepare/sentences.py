"""A small, deterministic sentence splitter for passage corpora that come as one string (e.g. the 2Wiki
passage file), so they can be encoded with one [RD] per sentence like HotpotQA's pre-split context."""
from __future__ import annotations

import re

# A sentence ends at . ! or ? followed by space and an upper-case letter, digit or quote; common
# abbreviations (single capitals "J.", "Mr.", "St.", "Dr.", "Jr.", "No.") do not end one.
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\u201c])")
_ABBREV = re.compile(r"(?:\b[A-Z]|\bMr|\bMrs|\bMs|\bDr|\bSt|\bJr|\bSr|\bNo|\bvs|\bc|\bca)\.$")


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences; the concatenation with single spaces restores it (modulo
    whitespace runs). Never returns an empty list for non-empty text."""
    text = text.strip()
    if not text:
        return []
    parts: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        candidate = text[start:m.start()]
        if _ABBREV.search(candidate):
            continue
        parts.append(candidate)
        start = m.end()
    parts.append(text[start:])
    return [p for p in parts if p]
