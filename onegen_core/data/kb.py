"""Entity knowledge base: a JSON Lines file of ``{"id", "title", "description"}`` objects.

Why a file of its own: entity linking retrieves entity descriptions (one document per entity, see
``onegen_core.prepare.entity_linking``), so the KB is the document collection of that task. It is
written once by a preparation step and read by training and evaluation; a duplicated id or an entity
without a title would make two runs disagree about what a retrieved id means, so both are errors.

Optional fields: ``type`` (string or null) and ``aliases`` (array of strings). Other extra fields are
accepted and ignored. ``description`` may be empty (a KB built from entity names alone has none) but
must be a string.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable

from .atomic_write import atomic_path
from .errors import DataError
from .open_source import source_name
from .strict_json import (
    OnError,
    Raw,
    Where,
    check_on_error,
    collect_records,
    iter_jsonl,
    json_type,
    required,
    required_text,
    typed,
)

__all__ = ["Entity", "load_kb", "load_kb_with_report", "write_kb"]

_FIELD_RECORD = "<record>"
_FIELD_ENCODING = "<encoding>"


@dataclass(frozen=True)
class Entity:
    """One KB entry; ``id`` is what gold labels name (e.g. a Wikidata QID)."""

    id: str
    title: str
    description: str
    type: str | None = None
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON object :func:`load_kb` reads back; optional fields only when set."""
        data: dict[str, Any] = {"id": self.id, "title": self.title, "description": self.description}
        if self.type is not None:
            data["type"] = self.type
        if self.aliases:
            data["aliases"] = list(self.aliases)
        return data


# --------------------------------------------------------------------------- validation


def _parse_entity(raw: dict, where: Where) -> Entity:
    """Fields in a fixed order (id first) so the first error reported is deterministic."""
    entity_id = required_text(raw, "id", where)
    title = required_text(raw, "title", where)
    description = typed(required(raw, "description", where), str, "description", where)
    entity_type = raw.get("type")
    if entity_type is not None:
        typed(entity_type, str, "type", where)
    aliases = raw.get("aliases")
    if aliases is None:
        aliases = []
    typed(aliases, list, "aliases", where)
    return Entity(
        id=entity_id,
        title=title,
        description=description,
        type=entity_type,
        aliases=tuple(typed(a, str, f"aliases[{i}]", where) for i, a in enumerate(aliases)),
    )


def _record_label(raw: Raw) -> str:
    """``line 3 (id Q42)`` when the id is readable, else ``line 3``."""
    value = raw.value
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"].strip():
        return f"{raw.position} (id {value['id']})"
    return raw.position


def _decode(file: str, raw: Raw, seen: dict[str, str]) -> Entity:
    if raw.error is not None:
        raise raw.error
    where = Where(file, _record_label(raw))
    if not isinstance(raw.value, dict):
        raise where.error(_FIELD_RECORD, f"expected object, got {json_type(raw.value)}")
    entity = _parse_entity(raw.value, where)
    first = seen.setdefault(entity.id, raw.position)
    if first != raw.position:
        raise where.error("id", f"duplicate entity id {entity.id!r} (first seen at {first})")
    return entity


def _load(path: str | os.PathLike, raise_errors: bool) -> tuple[list[Entity], list[DataError]]:
    seen: dict[str, str] = {}
    return collect_records(path, iter_jsonl, lambda file, raw: _decode(file, raw, seen), raise_errors)


# --------------------------------------------------------------------------- public API


def load_kb(path: str | os.PathLike, on_error: OnError = "raise") -> list[Entity]:
    """Load a KB JSON Lines file (local path or URL, optionally ``.gz``/``.bz2``), in file order.

    With ``on_error="skip"`` malformed entries (and second occurrences of an id) are dropped; use
    :func:`load_kb_with_report` to see why.
    """
    return _load(path, check_on_error(on_error))[0]


def load_kb_with_report(path: str | os.PathLike) -> tuple[list[Entity], list[DataError]]:
    """Load a KB, returning the valid entities and one :class:`DataError` per excluded line."""
    return _load(path, raise_errors=False)


def write_kb(path: str | os.PathLike, entities: Iterable[Entity]) -> int:
    """Write ``entities`` as JSON Lines that :func:`load_kb` reads back equal; return the count.

    Entries are validated with the loader's own rules first (a KB that cannot be read back is a bug
    of the writer, reported as a :class:`DataError` naming the output file and the entry index), and
    the file is written to a temporary name then renamed, so a crash never leaves a half-written KB
    that a later stage would take for complete. A ``.gz`` suffix writes gzip.
    """
    file = source_name(path)
    lines: list[str] = []
    seen: dict[str, str] = {}
    for index, entity in enumerate(entities):
        raw = Raw(f"#{index}", entity.to_dict())
        _decode(file, raw, seen)
        lines.append(json.dumps(raw.value, ensure_ascii=False) + "\n")
    opener = gzip.open if file.lower().endswith(".gz") else open
    with atomic_path(path) as tmp, opener(tmp, "wt", encoding="utf-8") as out:
        out.writelines(lines)
    return len(lines)
