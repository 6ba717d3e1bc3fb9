"""Passage corpora: a JSON array (or JSON Lines) of `{"title", "text"}` objects, e.g. the 2Wiki
passage file. Strict like the other loaders (the same kit, `strict_json`): errors name file, record and
field; BOM, `.gz`/`.bz2`, truncated files and deeply nested JSON are read or reported like theirs."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .strict_json import Raw, Where, collect_records, iter_raw, json_type, required_text


@dataclass(frozen=True)
class Passage:
    title: str
    text: str


def _decode(file: str, raw: Raw) -> Passage:
    if raw.error is not None:
        raise raw.error
    where = Where(file, raw.position)
    if not isinstance(raw.value, dict):
        raise where.error("<record>", f"expected an object, got {json_type(raw.value)}")
    return Passage(required_text(raw.value, "title", where), required_text(raw.value, "text", where))


def load_passages(path: str | os.PathLike) -> list[Passage]:
    """Every passage of the file, in order; the first malformed one raises `DataError`."""
    return collect_records(path, iter_raw, _decode, raise_errors=True)[0]
