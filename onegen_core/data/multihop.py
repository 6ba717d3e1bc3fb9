"""Strict loaders for HotpotQA and 2WikiMultihopQA files.

Why strict: OneGen learns retrieval from the supporting-fact sentences, so a wrong title, an index off
the end of a paragraph or a mistyped field would silently produce wrong training targets or wrong
scores. Every malformed record therefore raises :class:`DataError` naming the file, the record and the
field; callers that prefer to drop bad records use ``on_error="skip"`` or the ``*_with_report`` loaders.

Both loaders read a JSON array (the official release format) or JSON Lines (one object per line); the
format is detected from the first non-whitespace character of the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .errors import DataError
from .strict_json import (
    OnError,
    Raw,
    Where,
    check_on_error,
    collect_records,
    fixed_list,
    iter_raw,
    json_type,
    required,
    required_text,
    typed,
)

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


def _parse_paragraph(item: Any, field: str, where: Where) -> Paragraph:
    """``[title, [sentence, ...]]``."""
    title, sentences = fixed_list(item, 2, field, where)
    typed(title, str, f"{field}[0]", where)
    typed(sentences, list, f"{field}[1]", where)
    return Paragraph(
        title=title,
        sentences=tuple(typed(s, str, f"{field}[1][{j}]", where) for j, s in enumerate(sentences)),
    )


def _parse_context(value: Any, where: Where) -> tuple[Paragraph, ...]:
    """The paragraphs; titles are unique, because supporting facts and decompositions name a paragraph
    by its title (with two, a positive could point at the wrong one)."""
    items = typed(value, list, "context", where)
    paragraphs = tuple(_parse_paragraph(item, f"context[{i}]", where) for i, item in enumerate(items))
    first: dict[str, int] = {}
    for i, p in enumerate(paragraphs):
        j = first.setdefault(p.title, i)
        if j != i:
            raise where.error(f"context[{i}][0]", f"title {p.title!r} repeats context[{j}][0]: a supporting fact "
                                                  "naming it would be ambiguous")
    return paragraphs


def _parse_fact(item: Any, field: str, sizes: dict[str, int], where: Where) -> SupportingFact:
    """``[title, sentence_index]``, checked against the record's own context."""
    title, index = fixed_list(item, 2, field, where)
    typed(title, str, f"{field}[0]", where)
    typed(index, int, f"{field}[1]", where)
    if title not in sizes:
        raise where.error(f"{field}[0]", f"title {title!r} is not in context")
    if not 0 <= index < sizes[title]:
        raise where.error(
            f"{field}[1]",
            f"sentence index {index} out of range for paragraph {title!r} ({sizes[title]} sentences)",
        )
    return SupportingFact(title=title, sentence=index)


def _parse_supporting_facts(
    value: Any, context: tuple[Paragraph, ...], where: Where
) -> tuple[SupportingFact, ...]:
    sizes = {paragraph.title: len(paragraph.sentences) for paragraph in context}  # titles are unique
    items = typed(value, list, "supporting_facts", where)
    if not items:  # a question without evidence has nothing to retrieve: no [RQ] can be labelled
        raise where.error("supporting_facts", "must not be empty")
    return tuple(_parse_fact(item, f"supporting_facts[{i}]", sizes, where) for i, item in enumerate(items))


def _parse_evidences(value: Any, where: Where) -> tuple[tuple[str, str, str], ...]:
    """2Wiki ``[[subject, relation, object], ...]``."""
    items = typed(value, list, "evidences", where)
    triples = []
    for i, item in enumerate(items):
        field = f"evidences[{i}]"
        fixed_list(item, 3, field, where)
        triples.append(tuple(typed(part, str, f"{field}[{k}]", where) for k, part in enumerate(item)))
    return tuple(triples)


def _parse_common(raw: dict, where: Where) -> dict[str, Any]:
    """Fields shared by both datasets, validated in a fixed order (id first)."""
    record_id = required_text(raw, "_id", where)
    question = required_text(raw, "question", where)
    answer = required_text(raw, "answer", where)
    context = _parse_context(required(raw, "context", where), where)
    facts = _parse_supporting_facts(required(raw, "supporting_facts", where), context, where)
    return {
        "id": record_id,
        "question": question,
        "answer": answer,
        "supporting_facts": facts,
        "context": context,
        "type": required_text(raw, "type", where),
    }


def _parse_hotpotqa(raw: dict, where: Where) -> MultiHopRecord:
    common = _parse_common(raw, where)
    return MultiHopRecord(**common, level=required_text(raw, "level", where), evidences=(), source=HOTPOTQA)


def _parse_2wiki(raw: dict, where: Where) -> MultiHopRecord:
    """Extra release fields (``entity_ids``, ``evidences_id``, ``answer_id``) are ignored."""
    common = _parse_common(raw, where)
    evidences = _parse_evidences(required(raw, "evidences", where), where)
    return MultiHopRecord(**common, level=None, evidences=evidences, source=TWOWIKI)


# --------------------------------------------------------------------------- file reading


def _readable_id(value: Any) -> str | None:
    """The record's ``_id`` if it is a non-blank string, else None (field validation reports why)."""
    if isinstance(value, dict) and isinstance(value.get("_id"), str) and value["_id"].strip():
        return value["_id"]
    return None


def _check_unique(record_id: str, raw: Raw, where: Where, seen: dict[str, str]) -> None:
    """Reject a second record with an ``_id`` already seen in this file."""
    first = seen.setdefault(record_id, raw.position)
    if first != raw.position:
        raise where.error("_id", f"duplicate _id {record_id!r} (first seen at {first})")


_Parser = Callable[[dict, Where], MultiHopRecord]


def _decode(file: str, raw: Raw, parse: _Parser, seen: dict[str, str]) -> MultiHopRecord:
    if raw.error is not None:
        raise raw.error
    record_id = _readable_id(raw.value)
    where = Where(file, record_id or raw.position)
    if not isinstance(raw.value, dict):
        raise where.error(_FIELD_RECORD, f"expected object, got {json_type(raw.value)}")
    if record_id is not None:
        _check_unique(record_id, raw, where, seen)
    return parse(raw.value, where)


def _load(
    path: str | os.PathLike, parse: _Parser, raise_errors: bool
) -> tuple[list[MultiHopRecord], list[DataError]]:
    """Read and validate every record; raise the first error or collect per-record errors."""
    seen: dict[str, str] = {}
    return collect_records(path, iter_raw, lambda file, raw: _decode(file, raw, parse, seen), raise_errors)


# --------------------------------------------------------------------------- public loaders


def load_hotpotqa(path: str | os.PathLike, on_error: OnError = "raise") -> list[MultiHopRecord]:
    """Load a HotpotQA train/dev file (JSON array, or JSON Lines).

    Test-split files lack ``answer``/``supporting_facts`` and are rejected. With ``on_error="skip"``
    malformed records are dropped silently; use :func:`load_hotpotqa_with_report` to see why.
    File-level errors (invalid JSON array, bad encoding) always raise.
    """
    return _load(path, _parse_hotpotqa, check_on_error(on_error))[0]


def load_hotpotqa_with_report(path: str | os.PathLike) -> tuple[list[MultiHopRecord], list[DataError]]:
    """Load HotpotQA, returning the valid records and one :class:`DataError` per excluded record."""
    return _load(path, _parse_hotpotqa, raise_errors=False)


def load_2wiki(path: str | os.PathLike, on_error: OnError = "raise") -> list[MultiHopRecord]:
    """Load a 2WikiMultihopQA file (official JSON array, or JSON Lines).

    The optional release fields ``entity_ids``, ``evidences_id`` and ``answer_id`` are accepted and
    ignored. ``on_error`` behaves as in :func:`load_hotpotqa`.
    """
    return _load(path, _parse_2wiki, check_on_error(on_error))[0]


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
