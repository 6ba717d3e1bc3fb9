"""Passage corpora: a JSON array (or JSON Lines) of `{"title", "text"}` objects, e.g. the 2Wiki
passage file. Strict like the other loaders: errors name file, record and field."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .errors import DataError
from .open_source import open_text, source_name


@dataclass(frozen=True)
class Passage:
    title: str
    text: str


def load_passages(path: str | os.PathLike) -> list[Passage]:
    name = source_name(path)
    with open_text(path) as fh:
        raw = fh.read()
    stripped = raw.lstrip()
    try:
        if stripped.startswith("["):
            items = [(f"#{i}", x) for i, x in enumerate(json.loads(raw))]
        else:
            items = [(f"line {n}", json.loads(line)) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as e:
        raise DataError(name, "<file>", "<json>", f"invalid JSON: {e}") from None
    out = []
    for where, item in items:
        if not isinstance(item, dict):
            raise DataError(name, where, "<record>", f"expected an object, got {type(item).__name__}")
        for field in ("title", "text"):
            if not isinstance(item.get(field), str) or not item[field].strip():
                raise DataError(name, where, field, "missing or not a non-empty string")
        out.append(Passage(item["title"], item["text"]))
    return out
