"""Strict loaders for HotpotQA and 2WikiMultihopQA files.

Why strict: OneGen learns retrieval from the supporting-fact sentences, so a wrong title, an index off
the end of a paragraph or a mistyped field would silently produce wrong training targets or wrong
scores. Every malformed record therefore raises :class:`DataError` naming the file, the record and the
field; callers that prefer to drop bad records use ``on_error="skip"`` or the ``*_with_report`` loaders.

Both loaders read a JSON array (the official release format) or JSON Lines (one object per line); the
format is detected from the first non-whitespace character of the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Iterable, Iterator, Literal, TextIO

from .errors import FILE_RECORD, DataError
from .open_source import open_text, source_name

__all__ = [
    "HOTPOTQA",
    "TWOWIKI",
    "MultiHopRecord",
    "OnError",
    "Paragraph",
    "SupportingFact",
    "join_sentences",
    "load_2wiki",
    "load_2wiki_with_report",
    "load_hotpotqa",
    "load_hotpotqa_with_report",
]

HOTPOTQA = "hotpotqa"
TWOWIKI = "2wiki"
OnError = Literal["raise", "skip"]

# Pseudo field names for errors that are not about one JSON field.
_FIELD_ROOT = "<root>"
_FIELD_JSON = "<json>"
_FIELD_ENCODING = "<encoding>"
_FIELD_RECORD = "<record>"


# --------------------------------------------------------------------------- data model


def join_sentences(sentences: Iterable[str]) -> str:
    """Join a paragraph's sentences into its text.

    HotpotQA sentences after the first keep their leading space while 2Wiki sentences have none, so a
    single rule serves both: insert one space only between two sentences not already separated by
    whitespace. Empty sentences contribute nothing.
    """
    parts: list[str] = []
    last_char = ""
    for sentence in sentences:
        if not sentence:
            continue
        if last_char and not last_char.isspace() and not sentence[0].isspace():
            parts.append(" ")
        parts.append(sentence)
        last_char = sentence[-1]
    return "".join(parts)


@dataclass(frozen=True)
class Paragraph:
    """A titled context paragraph, kept as sentences because supporting facts index sentences."""

    title: str
    sentences: tuple[str, ...]

    def text(self) -> str:
        """The paragraph as one string (see :func:`join_sentences`)."""
        return join_sentences(self.sentences)


@dataclass(frozen=True)
class SupportingFact:
    """One gold evidence sentence: the paragraph title and the sentence index within it."""

    title: str
    sentence: int


@dataclass(frozen=True)
class MultiHopRecord:
    """One validated question with its context, in a form common to HotpotQA and 2Wiki."""

    id: str
    question: str
    answer: str
    supporting_facts: tuple[SupportingFact, ...]
    context: tuple[Paragraph, ...]
    type: str
    level: str | None  # HotpotQA only
    evidences: tuple[tuple[str, str, str], ...]  # 2Wiki only, else ()
    source: str  # HOTPOTQA or TWOWIKI

    def paragraph(self, title: str) -> Paragraph:
        """The first context paragraph with this title; ``KeyError`` if there is none."""
        for paragraph in self.context:
            if paragraph.title == title:
                return paragraph
        raise KeyError(title)

    def supporting_titles(self) -> tuple[str, ...]:
        """Titles of the gold paragraphs, in order of first appearance in ``supporting_facts``."""
        return tuple(dict.fromkeys(fact.title for fact in self.supporting_facts))


# --------------------------------------------------------------------------- field validation


@dataclass(frozen=True)
class _Where:
    """The file and record being validated, to build located errors."""

    file: str
    record: str

    def error(self, field: str, message: str) -> DataError:
        return DataError(self.file, self.record, field, message)


_JSON_NAMES: dict[type, str] = {str: "string", int: "integer", list: "array", dict: "object"}


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, float):
        return "number"
    for python_type, name in _JSON_NAMES.items():
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _typed(value: Any, expected: type, field: str, where: _Where) -> Any:
    """Return ``value`` if it has the expected JSON type (booleans are never integers)."""
    if isinstance(value, bool) or not isinstance(value, expected):
        raise where.error(field, f"expected {_JSON_NAMES[expected]}, got {_json_type(value)}")
    return value


def _get(raw: dict, key: str, where: _Where) -> Any:
    """The value of a required field."""
    if key not in raw:
        raise where.error(key, "missing required field")
    return raw[key]


def _text(raw: dict, key: str, where: _Where) -> str:
    """A required, non-blank string field."""
    value = _typed(_get(raw, key, where), str, key, where)
    if not value.strip():
        raise where.error(key, "must not be empty")
    return value


def _fixed_list(value: Any, length: int, field: str, where: _Where) -> list:
    """An array with exactly ``length`` items (pairs, triples)."""
    _typed(value, list, field, where)
    if len(value) != length:
        raise where.error(field, f"expected an array of {length} items, got {len(value)}")
    return value


def _parse_paragraph(item: Any, field: str, where: _Where) -> Paragraph:
    """``[title, [sentence, ...]]``."""
    title, sentences = _fixed_list(item, 2, field, where)
    _typed(title, str, f"{field}[0]", where)
    _typed(sentences, list, f"{field}[1]", where)
    return Paragraph(
        title=title,
        sentences=tuple(_typed(s, str, f"{field}[1][{j}]", where) for j, s in enumerate(sentences)),
    )


def _parse_context(value: Any, where: _Where) -> tuple[Paragraph, ...]:
    items = _typed(value, list, "context", where)
    return tuple(_parse_paragraph(item, f"context[{i}]", where) for i, item in enumerate(items))


def _parse_fact(item: Any, field: str, sizes: dict[str, int], where: _Where) -> SupportingFact:
    """``[title, sentence_index]``, checked against the record's own context."""
    title, index = _fixed_list(item, 2, field, where)
    _typed(title, str, f"{field}[0]", where)
    _typed(index, int, f"{field}[1]", where)
    if title not in sizes:
        raise where.error(f"{field}[0]", f"title {title!r} is not in context")
    if not 0 <= index < sizes[title]:
        raise where.error(
            f"{field}[1]",
            f"sentence index {index} out of range for paragraph {title!r} ({sizes[title]} sentences)",
        )
    return SupportingFact(title=title, sentence=index)


def _parse_supporting_facts(
    value: Any, context: tuple[Paragraph, ...], where: _Where
) -> tuple[SupportingFact, ...]:
    sizes: dict[str, int] = {}
    for paragraph in context:  # same resolution as MultiHopRecord.paragraph: first title wins
        sizes.setdefault(paragraph.title, len(paragraph.sentences))
    items = _typed(value, list, "supporting_facts", where)
    return tuple(_parse_fact(item, f"supporting_facts[{i}]", sizes, where) for i, item in enumerate(items))


def _parse_evidences(value: Any, where: _Where) -> tuple[tuple[str, str, str], ...]:
    """2Wiki ``[[subject, relation, object], ...]``."""
    items = _typed(value, list, "evidences", where)
    triples = []
    for i, item in enumerate(items):
        field = f"evidences[{i}]"
        _fixed_list(item, 3, field, where)
        triples.append(tuple(_typed(part, str, f"{field}[{k}]", where) for k, part in enumerate(item)))
    return tuple(triples)


def _parse_common(raw: dict, where: _Where) -> dict[str, Any]:
    """Fields shared by both datasets, validated in a fixed order (id first)."""
    record_id = _text(raw, "_id", where)
    question = _text(raw, "question", where)
    answer = _text(raw, "answer", where)
    context = _parse_context(_get(raw, "context", where), where)
    facts = _parse_supporting_facts(_get(raw, "supporting_facts", where), context, where)
    return {
        "id": record_id,
        "question": question,
        "answer": answer,
        "supporting_facts": facts,
        "context": context,
        "type": _text(raw, "type", where),
    }


def _parse_hotpotqa(raw: dict, where: _Where) -> MultiHopRecord:
    common = _parse_common(raw, where)
    return MultiHopRecord(**common, level=_text(raw, "level", where), evidences=(), source=HOTPOTQA)


def _parse_2wiki(raw: dict, where: _Where) -> MultiHopRecord:
    """Extra release fields (``entity_ids``, ``evidences_id``, ``answer_id``) are ignored."""
    common = _parse_common(raw, where)
    evidences = _parse_evidences(_get(raw, "evidences", where), where)
    return MultiHopRecord(**common, level=None, evidences=evidences, source=TWOWIKI)


# --------------------------------------------------------------------------- file reading


@dataclass(frozen=True)
class _Raw:
    """One undecoded record: its position label, its JSON value, or the error that replaced it."""

    position: str  # "#<index>" (array) or "line <n>" (JSONL)
    value: Any = None
    error: DataError | None = None


def _head_lines(stream: TextIO) -> list[str]:
    """Read lines up to and including the first one with content (to detect the format)."""
    lines = []
    for line in stream:
        lines.append(line)
        if line.strip():
            break
    return lines


def _iter_array(file: str, text: str) -> Iterator[_Raw]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            file, FILE_RECORD, _FIELD_JSON,
            f"invalid JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}",
        ) from None
    for index, value in enumerate(data):
        yield _Raw(f"#{index}", value)


def _iter_jsonl(file: str, lines: Iterable[str]) -> Iterator[_Raw]:
    """One record per non-blank line; a line that is not JSON becomes a per-record error."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        position = f"line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            message = f"invalid JSON at column {exc.colno}: {exc.msg}"
            yield _Raw(position, error=DataError(file, position, _FIELD_JSON, message))
            continue
        yield _Raw(position, value)


def _iter_raw(file: str, stream: TextIO) -> Iterator[_Raw]:
    """Detect JSON array vs JSON Lines by the first non-whitespace character and iterate records."""
    head = _head_lines(stream)
    if not head or not head[-1].strip():
        raise DataError(file, FILE_RECORD, _FIELD_ROOT, "file is empty: expected a JSON array or JSON Lines")
    first = head[-1].lstrip()[0]
    if first == "[":
        yield from _iter_array(file, "".join(head) + stream.read())
    elif first == "{":
        yield from _iter_jsonl(file, chain(head, stream))
    else:
        raise DataError(
            file, FILE_RECORD, _FIELD_ROOT,
            f"expected a JSON array ('[') or JSON Lines objects ('{{'), file starts with {first!r}",
        )


def _readable_id(value: Any) -> str | None:
    """The record's ``_id`` if it is a non-blank string, else None (field validation reports why)."""
    if isinstance(value, dict) and isinstance(value.get("_id"), str) and value["_id"].strip():
        return value["_id"]
    return None


def _check_unique(record_id: str, raw: _Raw, where: _Where, seen: dict[str, str]) -> None:
    """Reject a second record with an ``_id`` already seen in this file."""
    first = seen.setdefault(record_id, raw.position)
    if first != raw.position:
        raise where.error("_id", f"duplicate _id {record_id!r} (first seen at {first})")


_Parser = Callable[[dict, _Where], MultiHopRecord]


def _decode(file: str, raw: _Raw, parse: _Parser, seen: dict[str, str]) -> MultiHopRecord:
    if raw.error is not None:
        raise raw.error
    record_id = _readable_id(raw.value)
    where = _Where(file, record_id or raw.position)
    if not isinstance(raw.value, dict):
        raise where.error(_FIELD_RECORD, f"expected object, got {_json_type(raw.value)}")
    if record_id is not None:
        _check_unique(record_id, raw, where, seen)
    return parse(raw.value, where)


def collect_records(
    path: str | os.PathLike,
    iter_raw: Callable[[str, TextIO], Iterable[_Raw]],
    decode: Callable[[str, _Raw], Any],
    raise_errors: bool,
) -> tuple[list, list[DataError]]:
    """The loop every strict loader shares: decode each raw record, raise the first error or collect
    one error per excluded record; a file that is not UTF-8 always raises."""
    file = source_name(path)
    items: list = []
    errors: list[DataError] = []
    with open_text(path) as stream:
        try:
            for raw in iter_raw(file, stream):
                try:
                    items.append(decode(file, raw))
                except DataError as exc:
                    if raise_errors:
                        raise
                    errors.append(exc)
        except UnicodeDecodeError as exc:
            raise DataError(file, FILE_RECORD, _FIELD_ENCODING, f"not valid UTF-8: {exc}") from None
    return items, errors


def _load(
    path: str | os.PathLike, parse: _Parser, raise_errors: bool
) -> tuple[list[MultiHopRecord], list[DataError]]:
    """Read and validate every record; raise the first error or collect per-record errors."""
    seen: dict[str, str] = {}
    return collect_records(path, _iter_raw, lambda file, raw: _decode(file, raw, parse, seen), raise_errors)


def _check_on_error(on_error: str) -> bool:
    """Validate the policy; return whether errors must be raised."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error == "raise"


# --------------------------------------------------------------------------- public loaders


def load_hotpotqa(path: str | os.PathLike, on_error: OnError = "raise") -> list[MultiHopRecord]:
    """Load a HotpotQA train/dev file (JSON array, or JSON Lines).

    Test-split files lack ``answer``/``supporting_facts`` and are rejected. With ``on_error="skip"``
    malformed records are dropped silently; use :func:`load_hotpotqa_with_report` to see why.
    File-level errors (invalid JSON array, bad encoding) always raise.
    """
    return _load(path, _parse_hotpotqa, _check_on_error(on_error))[0]


def load_hotpotqa_with_report(path: str | os.PathLike) -> tuple[list[MultiHopRecord], list[DataError]]:
    """Load HotpotQA, returning the valid records and one :class:`DataError` per excluded record."""
    return _load(path, _parse_hotpotqa, raise_errors=False)


def load_2wiki(path: str | os.PathLike, on_error: OnError = "raise") -> list[MultiHopRecord]:
    """Load a 2WikiMultihopQA file (official JSON array, or JSON Lines).

    The optional release fields ``entity_ids``, ``evidences_id`` and ``answer_id`` are accepted and
    ignored. ``on_error`` behaves as in :func:`load_hotpotqa`.
    """
    return _load(path, _parse_2wiki, _check_on_error(on_error))[0]


def load_2wiki_with_report(path: str | os.PathLike) -> tuple[list[MultiHopRecord], list[DataError]]:
    """Load 2Wiki, returning the valid records and one :class:`DataError` per excluded record."""
    return _load(path, _parse_2wiki, raise_errors=False)


def record_to_dict(record: MultiHopRecord) -> dict[str, Any]:
    """The official JSON form of a record (HotpotQA fields; 2Wiki adds `evidences`), which
    `load_hotpotqa` / `load_2wiki` read back unchanged. `source` rides along as an extra field."""
    out: dict[str, Any] = {
        "_id": record.id,
        "question": record.question,
        "answer": record.answer,
        "supporting_facts": [[f.title, f.sentence] for f in record.supporting_facts],
        "context": [[p.title, list(p.sentences)] for p in record.context],
        "type": record.type,
        "source": record.source,
    }
    if record.level is not None:
        out["level"] = record.level
    if record.source == "2wiki":
        out["evidences"] = [list(e) for e in record.evidences]
    return out
