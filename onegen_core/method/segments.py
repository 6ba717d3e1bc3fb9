"""What a OneGen training example is, before tokenisation.

An example is a main sequence (a list of segments) plus the documents its queries retrieve from.
The structure, not the text, says which tokens are trained: labels are derived from segments at
encoding time and never by searching decoded text for markers.

Roles belong to *positions* (OneGen §3.1): a position is GEN when its last-layer hidden state is
trained to predict the next token, RET when that hidden state is a retrieval embedding ([RQ], [RD]),
CTX otherwise. So the position before an [RQ] is GEN (the model learns to emit [RQ]), the [RQ]
position is RET (it predicts nothing), and generation after a retrieval needs a fresh GEN position:
the pasted document's closing tag (R→G) or `<CON>` (G→R).

The JSON form of these classes (see `to_dict` / `from_dict`) is the training-set format that the
collator reads and that users bring their own data in; it is documented in the README.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Union

from onegen_core.method.tokens import RD, RQ


class Role(IntEnum):
    CTX = 0
    GEN = 1
    RET = 2


@dataclass(frozen=True)
class Text:
    """A span of text; `generated` means the model writes it (its tokens are next-token targets)."""

    text: str
    generated: bool


@dataclass(frozen=True)
class Retrieval:
    """An [RQ] emitted by the model; `query_id` names its `Query` (positives, negatives)."""

    query_id: str


Segment = Union[Text, Retrieval]


@dataclass(frozen=True)
class Query:
    """Labels of one [RQ]: ids of the document units that are its positives and its negatives."""

    id: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class Document:
    """A document encoded as its own sequence: `units` joined, with [RD] after each unit
    (granularity "sentence") or once at the end (granularity "document")."""

    id: str
    units: tuple[str, ...]
    title: str = ""
    granularity: str = "document"

    def __post_init__(self) -> None:
        if self.granularity not in ("document", "sentence"):
            raise ValueError(f"document {self.id!r}: granularity must be 'document' or 'sentence'")
        if not self.units:
            raise ValueError(f"document {self.id!r} has no text units")

    def unit_ids(self) -> tuple[str, ...]:
        """Ids of the [RD] vectors this document yields, in order."""
        if self.granularity == "document":
            return (self.id,)
        return tuple(sentence_unit_id(self.id, j) for j in range(len(self.units)))


def sentence_unit_id(doc_id: str, sentence: int) -> str:
    return f"{doc_id}#{sentence}"


@dataclass(frozen=True)
class TrainingExample:
    id: str
    task: str
    segments: tuple[Segment, ...]
    queries: tuple[Query, ...] = ()
    documents: tuple[Document, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        validate_example(self)

    def query(self, query_id: str) -> Query:
        for q in self.queries:
            if q.id == query_id:
                return q
        raise KeyError(query_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "segments": [
                {"text": s.text, "generated": s.generated} if isinstance(s, Text) else {"retrieval": s.query_id}
                for s in self.segments
            ],
            "queries": [
                {"id": q.id, "positives": list(q.positives), "negatives": list(q.negatives)} for q in self.queries
            ],
            "documents": [
                {"id": d.id, "title": d.title, "units": list(d.units), "granularity": d.granularity}
                for d in self.documents
            ],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "<example>") -> "TrainingExample":
        """Parse the JSON form; errors name `where` (file and line) and the field."""
        try:
            segments: list[Segment] = []
            for i, s in enumerate(_field(data, "segments", list, where)):
                if "retrieval" in s:
                    segments.append(Retrieval(_field(s, "retrieval", str, f"{where}: segments[{i}]")))
                else:
                    segments.append(
                        Text(
                            _field(s, "text", str, f"{where}: segments[{i}]"),
                            _field(s, "generated", bool, f"{where}: segments[{i}]"),
                        )
                    )
            queries = tuple(
                Query(
                    _field(q, "id", str, f"{where}: queries[{i}]"),
                    tuple(_field(q, "positives", list, f"{where}: queries[{i}]")),
                    tuple(q.get("negatives", [])),
                )
                for i, q in enumerate(data.get("queries", []))
            )
            documents = tuple(
                Document(
                    _field(d, "id", str, f"{where}: documents[{i}]"),
                    tuple(_field(d, "units", list, f"{where}: documents[{i}]")),
                    d.get("title", ""),
                    d.get("granularity", "document"),
                )
                for i, d in enumerate(data.get("documents", []))
            )
            return cls(
                id=_field(data, "id", str, where),
                task=_field(data, "task", str, where),
                segments=tuple(segments),
                queries=queries,
                documents=documents,
                meta=data.get("meta", {}),
            )
        except (TypeError, AttributeError) as e:  # a list where a dict was expected, etc.
            raise ValueError(f"{where}: malformed example: {e}") from e


def _field(obj: dict[str, Any], name: str, typ: type, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    if name not in obj:
        raise ValueError(f"{where}: field '{name}' is missing")
    value = obj[name]
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise ValueError(f"{where}: field '{name}' must be {typ.__name__}, got {type(value).__name__}")
    return value


def validate_example(ex: TrainingExample) -> None:
    """Structural checks: every [RQ] has a query, every label names a unit of the example."""
    where = f"example {ex.id!r}"
    for i, seg in enumerate(ex.segments):
        if isinstance(seg, Text) and (RQ in seg.text or RD in seg.text):
            # Retrieval tokens must come from Retrieval segments so their positions are known.
            raise ValueError(f"{where}: segments[{i}] contains a literal {RQ}/{RD}; use a Retrieval segment")
    query_ids = [q.id for q in ex.queries]
    if len(set(query_ids)) != len(query_ids):
        raise ValueError(f"{where}: duplicate query ids")
    used = [s.query_id for s in ex.segments if isinstance(s, Retrieval)]
    for qid in used:
        if qid not in query_ids:
            raise ValueError(f"{where}: [RQ] names query {qid!r} that has no labels in 'queries'")
    units = {u for d in ex.documents for u in d.unit_ids()}
    for q in ex.queries:
        for kind, ids in (("positives", q.positives), ("negatives", q.negatives)):
            unknown = [u for u in ids if u not in units]
            if unknown:
                raise ValueError(f"{where}: query {q.id!r} field '{kind}' names unknown units {unknown[:3]}")
        if set(q.positives) & set(q.negatives):
            raise ValueError(f"{where}: query {q.id!r} has units both positive and negative")
