"""Strict loader for ELEVANT entity-linking benchmark files (``*.benchmark.jsonl``).

Why strict: these files are the entity-linking evaluation set. A span off by one, a label pointing at a
parent that does not exist or an article listed twice would silently change the scores, so every
malformed article raises :class:`DataError` naming the file, the line (and article id) and the field,
e.g. ``labels[3].span``. ``on_error="skip"`` and :func:`load_elevant_with_report` drop bad articles
instead and say why.

Format (ad-freiburg/elevant ``benchmarks/``): one article per line with ``id``, ``title``, ``text``,
``evaluation_span`` ``[start, end]`` and ``labels``. A label has ``span`` ``[start, end]`` (character
offsets into ``text``, end exclusive), ``entity_id`` (a Wikidata QID, or ``<NIL>`` for a mention of an
entity absent from Wikidata, or ``<NO_MAPPING>`` when the original benchmark's entity could not be
mapped to Wikidata), ``name`` (``"Unknown"`` for those), ``type`` (``"OTHER"`` or ``|``-joined type
QIDs such as ``"Q27096213|Q43229"``) and usually an ``id``; nested mentions carry ``parent`` (a label
id) and ``children`` (label ids). ELEVANT's optional booleans ``optional``, ``coref`` and ``desc`` are
read when present. Unknown extra fields are ignored so that newer releases still load.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .atomic_write import write_text_atomic
from .errors import DataError
from .open_source import source_name
from .strict_json import OnError, Raw, Where, check_on_error, collect_records, iter_jsonl, json_type, required, typed

__all__ = [
    "NIL",
    "NO_MAPPING",
    "OTHER_TYPE",
    "ElevantArticle",
    "ElevantLabel",
    "LinkedMention",
    "article_sources",
    "benchmark_name",
    "exported_predictions",
    "is_qid",
    "linked_article",
    "load_elevant",
    "load_elevant_with_report",
    "write_linked_articles",
]

NIL = "<NIL>"  # the mention names an entity that has no Wikidata item
NO_MAPPING = "<NO_MAPPING>"  # the source benchmark's entity could not be mapped to Wikidata
OTHER_TYPE = "OTHER"  # ELEVANT's type for entities outside its coarse type set

_QID = re.compile(r"Q[1-9][0-9]*\Z")
_BENCHMARK_SUFFIXES = (".benchmark.jsonl", ".jsonl", ".json")
_COMPRESSION_SUFFIXES = (".gz", ".bz2")
_FIELD_RECORD = "<record>"
_FIELD_ENCODING = "<encoding>"


def is_qid(entity_id: str) -> bool:
    """True for a Wikidata item id (``Q42``): the only entity ids a knowledge base can resolve."""
    return bool(_QID.match(entity_id))


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class ElevantLabel:
    """One gold mention. ``parent``/``children`` are label ids (``id``) of the same article."""

    span_start: int  # character offsets into the article text, end exclusive
    span_end: int
    entity_id: str
    name: str
    type: str | None  # raw ELEVANT type string, e.g. "OTHER" or "Q5|Q43229"; None when absent
    parent: int | None
    children: tuple[int, ...]
    id: int = 0  # the label's id; ELEVANT files number labels 0..n-1 in file order
    optional: bool = False  # ELEVANT: the mention may be left unlinked without penalty
    coref: bool = False  # ELEVANT: the mention is a coreference (e.g. a pronoun)

    @property
    def is_linkable(self) -> bool:
        """True when the gold entity is a QID; ``<NIL>``/``<NO_MAPPING>`` have no KB entry to retrieve."""
        return is_qid(self.entity_id)

    @property
    def span(self) -> tuple[int, int]:
        return (self.span_start, self.span_end)

    @property
    def type_ids(self) -> tuple[str, ...]:
        """The type QIDs (``()`` for ``OTHER`` or no type): the raw string joins several with ``|``."""
        if not self.type or self.type == OTHER_TYPE:
            return ()
        return tuple(self.type.split("|"))

    def mention(self, text: str) -> str:
        """The mention's surface string in the article ``text``."""
        return text[self.span_start:self.span_end]


@dataclass(frozen=True)
class ElevantArticle:
    """One validated benchmark article with its gold labels in file order."""

    id: int | str
    title: str  # empty in some benchmarks (aida-conll, derczynski)
    text: str
    evaluation_span: tuple[int, int] | None
    labels: tuple[ElevantLabel, ...]
    benchmark: str  # e.g. "msnbc", from the file name unless given

    @property
    def key(self) -> str:
        """``"msnbc/3"``: article ids repeat across benchmarks, so evaluation keys an article by both."""
        return f"{self.benchmark}/{self.id}"

    def label(self, label_id: int) -> ElevantLabel:
        """The label with this id; ``KeyError`` if there is none."""
        for label in self.labels:
            if label.id == label_id:
                return label
        raise KeyError(label_id)

    def top_level_labels(self) -> tuple[ElevantLabel, ...]:
        """Labels without a parent, sorted by span: a set of non-overlapping mentions, which is what a
        left-to-right entity-linking sequence can mark (nested children overlap their parent)."""
        return tuple(sorted((lb for lb in self.labels if lb.parent is None), key=lambda lb: lb.span))

    def linkable_labels(self) -> tuple[ElevantLabel, ...]:
        """Labels whose gold entity is a QID (see :attr:`ElevantLabel.is_linkable`)."""
        return tuple(lb for lb in self.labels if lb.is_linkable)


# --------------------------------------------------------------------------- field validation


def _int(value: Any, field: str, where: Where) -> int:
    return typed(value, int, field, where)


def _bool(raw: dict, key: str, field: str, where: Where) -> bool:
    """An optional boolean flag; absent or null means False (ELEVANT writes ``coref: null``)."""
    value = raw.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise where.error(f"{field}.{key}", f"expected boolean, got {json_type(value)}")
    return value


def _span(value: Any, field: str, text_length: int, where: Where, allow_empty: bool) -> tuple[int, int]:
    """``[start, end]`` with ``0 <= start < end <= len(text)`` (``start == end`` only if allowed)."""
    typed(value, list, field, where)
    if len(value) != 2:
        raise where.error(field, f"expected [start, end], got an array of {len(value)} items")
    start, end = _int(value[0], f"{field}[0]", where), _int(value[1], f"{field}[1]", where)
    if start < 0 or end > text_length:
        raise where.error(field, f"span [{start}, {end}] is outside the text (length {text_length})")
    if start > end or (start == end and not allow_empty):
        raise where.error(field, f"span [{start}, {end}]: start must be < end")
    return start, end


def _optional_str(raw: dict, key: str, field: str, where: Where) -> str | None:
    value = raw.get(key)
    return None if value is None else typed(value, str, f"{field}.{key}", where)


def _parse_label(raw: Any, index: int, text_length: int, where: Where) -> ElevantLabel:
    """One label; references to other labels are checked later, once all ids are known."""
    field = f"labels[{index}]"
    if not isinstance(raw, dict):
        raise where.error(field, f"expected object, got {json_type(raw)}")

    def required(key: str) -> Any:
        if key not in raw:
            raise where.error(f"{field}.{key}", "missing required field")
        return raw[key]

    start, end = _span(required("span"), f"{field}.span", text_length, where, allow_empty=False)
    entity_id = typed(required("entity_id"), str, f"{field}.entity_id", where)
    if not entity_id.strip():
        raise where.error(f"{field}.entity_id", "must not be empty")
    parent = raw.get("parent")
    children = raw.get("children")
    if children is None:
        children = []
    typed(children, list, f"{field}.children", where)
    return ElevantLabel(
        span_start=start,
        span_end=end,
        entity_id=entity_id,
        name=typed(required("name"), str, f"{field}.name", where),
        type=_optional_str(raw, "type", field, where),
        parent=None if parent is None else _int(parent, f"{field}.parent", where),
        children=tuple(_int(c, f"{field}.children[{j}]", where) for j, c in enumerate(children)),
        id=index if raw.get("id") is None else _int(raw["id"], f"{field}.id", where),
        optional=_bool(raw, "optional", field, where),
        coref=_bool(raw, "coref", field, where),
    )


def _check_label_ids(labels: list[ElevantLabel], where: Where) -> None:
    """Label ids are unique, and every parent/child names a label of this article whose span nests."""
    by_id: dict[int, ElevantLabel] = {}
    for i, label in enumerate(labels):
        if label.id in by_id:
            raise where.error(f"labels[{i}].id", f"duplicate label id {label.id}")
        by_id[label.id] = label
    for i, label in enumerate(labels):
        if label.parent is not None:
            parent = by_id.get(label.parent)
            if parent is None or parent is label:
                raise where.error(f"labels[{i}].parent", f"names no other label of this article ({label.parent})")
            if not (parent.span_start <= label.span_start and label.span_end <= parent.span_end):
                raise where.error(
                    f"labels[{i}].parent",
                    f"span {list(label.span)} is not inside its parent's span {list(parent.span)}",
                )
        for j, child in enumerate(label.children):
            if child not in by_id or child == label.id:
                raise where.error(f"labels[{i}].children[{j}]", f"names no other label of this article ({child})")


def _parse_article(raw: dict, where: Where, benchmark: str) -> ElevantArticle:
    """Fields in a fixed order (id first) so the first error reported is deterministic."""
    article_id = required(raw, "id", where)
    if isinstance(article_id, bool) or not isinstance(article_id, (int, str)):
        raise where.error("id", f"expected integer or string, got {json_type(article_id)}")
    title = typed(required(raw, "title", where), str, "title", where)
    text = typed(required(raw, "text", where), str, "text", where)
    evaluation_span = raw.get("evaluation_span")
    if evaluation_span is not None:
        evaluation_span = _span(evaluation_span, "evaluation_span", len(text), where, allow_empty=True)
    raw_labels = typed(required(raw, "labels", where), list, "labels", where)
    labels = [_parse_label(item, i, len(text), where) for i, item in enumerate(raw_labels)]
    _check_label_ids(labels, where)
    return ElevantArticle(
        id=article_id,
        title=title,
        text=text,
        evaluation_span=evaluation_span,
        labels=tuple(labels),
        benchmark=benchmark,
    )


# --------------------------------------------------------------------------- file reading


def benchmark_name(path: str | os.PathLike) -> str:
    """``.../msnbc.benchmark.jsonl(.gz)`` → ``"msnbc"``: the name ELEVANT gives the benchmark."""
    name = source_name(path).replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in _COMPRESSION_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    for suffix in _BENCHMARK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _record_label(raw: Raw) -> str:
    """``line 3 (id 948)`` when the id is readable: the line finds it in an editor, the id in ELEVANT."""
    value = raw.value
    if isinstance(value, dict) and isinstance(value.get("id"), (int, str)) and not isinstance(value["id"], bool):
        return f"{raw.position} (id {value['id']})"
    return raw.position


def _decode(file: str, raw: Raw, benchmark: str, seen: dict[str, str]) -> ElevantArticle:
    if raw.error is not None:
        raise raw.error
    where = Where(file, _record_label(raw))
    if not isinstance(raw.value, dict):
        raise where.error(_FIELD_RECORD, f"expected object, got {json_type(raw.value)}")
    article = _parse_article(raw.value, where, benchmark)
    # by its string form: 1 and "1" are one article to everything downstream (keys, exports, ELEVANT)
    first = seen.setdefault(str(article.id), raw.position)
    if first != raw.position:
        raise where.error("id", f"duplicate article id {article.id!r} (first seen at {first}; ids 1 and \"1\" "
                                "are the same article)")
    return article


def _load(
    path: str | os.PathLike, benchmark: str | None, raise_errors: bool
) -> tuple[list[ElevantArticle], list[DataError]]:
    name = benchmark if benchmark is not None else benchmark_name(path)
    seen: dict[str, str] = {}
    return collect_records(path, iter_jsonl, lambda file, raw: _decode(file, raw, name, seen), raise_errors)


# --------------------------------------------------------------------------- public loaders


def load_elevant(
    path: str | os.PathLike, on_error: OnError = "raise", benchmark: str | None = None
) -> list[ElevantArticle]:
    """Load an ELEVANT ``*.benchmark.jsonl`` file (local path or URL, optionally compressed).

    ``benchmark`` names the articles' benchmark; by default it is the file name without
    ``.benchmark.jsonl``. With ``on_error="skip"`` malformed articles are dropped; use
    :func:`load_elevant_with_report` to see why. A file that is not UTF-8 always raises.
    """
    return _load(path, benchmark, check_on_error(on_error))[0]


def load_elevant_with_report(
    path: str | os.PathLike, benchmark: str | None = None
) -> tuple[list[ElevantArticle], list[DataError]]:
    """Load ELEVANT, returning the valid articles and one :class:`DataError` per excluded article."""
    return _load(path, benchmark, raise_errors=False)


# --------------------------------------------------------------------------- linked-articles export
#
# ELEVANT scores a linker from the "linked articles" its `link_benchmark.py` writes: one JSON object per
# article per line, one file per benchmark, and a `.metadata.json` beside each. Written here in exactly
# that form so the files go into ELEVANT's own `evaluate.py` and web app unchanged.


class LinkedMention(Protocol):
    """A predicted mention as the export reads it (``onegen_core.evaluation.linking.PredictedMention``)."""

    start: int  # character offsets into the article text, end exclusive
    end: int
    entity_id: str | None  # None: marked but linked to nothing, exported as <NIL>
    candidates: Sequence[str]


_M = TypeVar("_M")


def exported_predictions(predictions: Mapping[str, Sequence[_M]]) -> dict[str, list[_M]]:
    """The (dataclass) predictions as the export writes them: a mention that was marked but linked
    nothing becomes ``<NIL>``, which ELEVANT's scorer counts as recognised but not linked."""
    return {key: [dataclasses.replace(m, entity_id=m.entity_id or NIL) for m in ms]  # type: ignore[attr-defined]
            for key, ms in predictions.items()}


def linked_article(source: Mapping[str, Any], mentions: Iterable[LinkedMention], linker: str) -> dict[str, Any]:
    """One article as ELEVANT's linked-articles JSONL holds it, built from the article's object in its
    benchmark file (`source`; ``id`` and ``text`` are enough): ELEVANT's key order, the benchmark's
    optional fields kept, ``entity_mentions`` sorted by span (omitted when there are none), each with
    ``id`` (``<NIL>`` when it linked nothing), ``recognized_by``/``linked_by`` = `linker` and sorted
    ``candidates`` that include the linked id, and ``labels`` sorted by label id."""
    art: dict[str, Any] = {"id": source["id"], "title": source.get("title", ""), "text": source["text"]}
    for k in ("hyperlinks", "title_synonyms"):
        if source.get(k):
            art[k] = source[k]
    if source.get("url") is not None:
        art["url"] = source["url"]
    found = [_mention_object(m, linker) for m in sorted(mentions, key=lambda m: (m.start, m.end))]
    if found:
        art["entity_mentions"] = found
    art["evaluation_span"] = source.get("evaluation_span") or [0, len(source["text"])]
    art["labels"] = sorted(source.get("labels", []), key=lambda lb: lb.get("id", 0))
    if source.get("sections"):
        art["sections"] = source["sections"]
    return art


def _mention_object(m: LinkedMention, linker: str) -> dict[str, Any]:
    entity = m.entity_id or NIL
    return {"span": [m.start, m.end], "id": entity, "recognized_by": linker, "linked_by": linker,
            "candidates": sorted(set(m.candidates) | {entity})}


def article_sources(paths: Iterable[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """Each article's JSON object as its benchmark file holds it, by :attr:`ElevantArticle.key`: the
    export copies fields the loader does not keep (hyperlinks, url, sections, the labels as written).
    Every file is validated as :func:`load_elevant` validates it, with the same errors."""
    sources: dict[str, dict[str, Any]] = {}
    for path in paths:
        name = benchmark_name(path)
        seen: dict[str, str] = {}
        pairs, _ = collect_records(path, iter_jsonl, lambda file, raw: (_decode(file, raw, name, seen), raw.value),
                                   raise_errors=True)
        for article, raw in pairs:
            sources[article.key] = raw
    return sources


def write_linked_articles(articles: Sequence[ElevantArticle], predictions: Mapping[str, Sequence[LinkedMention]],
                          sources: Mapping[str, Mapping[str, Any]], out_dir: str | os.PathLike, experiment: str,
                          description: str, seconds: float | None) -> list[Path]:
    """``<experiment>.<benchmark>.linked_articles.jsonl`` (`json.dumps` defaults: ASCII escapes) and
    ``<experiment>.<benchmark>.metadata.json`` in `out_dir` for each benchmark of `articles`, as
    ELEVANT's ``link_benchmark.py`` writes them; `predictions` by article key, `sources` from
    :func:`article_sources`. Returns the JSONL files written."""
    by_bench: dict[str, list[str]] = {}
    for a in articles:
        src = sources.get(a.key)
        if src is None:
            raise ValueError(f"ELEVANT export: article {a.key!r} is in none of evaluate.elevant's files as read again")
        by_bench.setdefault(a.benchmark, []).append(json.dumps(linked_article(src, predictions.get(a.key, []),
                                                                              experiment)) + "\n")
    stamp = datetime.datetime.now().strftime("%Y/%m/%d %H:%M")
    written = []
    for bench, lines in by_bench.items():
        path = Path(out_dir) / f"{experiment}.{bench}.linked_articles.jsonl"
        write_text_atomic(path, "".join(lines))
        meta = {"experiment_name": experiment, "experiment_description": description, "linker_name": "onegen",
                "timestamp": stamp, "linking_time": seconds}
        write_text_atomic(path.with_name(f"{experiment}.{bench}.metadata.json"), json.dumps(meta))
        written.append(path)
    return written
