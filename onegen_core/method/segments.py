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

Special tokens and data text: the markup of an example ([RQ], <paragraph>…</paragraph>, <CON>,
<FINAL-ANSWER>…) is put there by reconstruction, at places its structure fixes. Text that comes from
data — documents, KB entries, passages, questions, answers, articles, prompts — never produces one:
where it enters (the label stage, `onegen_core.prepare.documents`, `SegmentTokenizer.prompt`) it goes
through `escape_special_tokens`, and `validate_example` rejects a special token anywhere the structure
does not put one (an example whose text was not escaped, or a hand-written training file).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Union

from onegen_core.method.tokens import (
    CON,
    FINAL_CLOSE,
    FINAL_OPEN,
    LOC_CLOSE,
    LOC_OPEN,
    MENTION_CLOSE,
    MENTION_OPEN,
    PARAGRAPH_CLOSE,
    PARAGRAPH_OPEN,
    RD,
    RQ,
    SPECIAL_TOKENS,
)

# longest first, so that no token is matched inside a longer one
_SPECIAL = re.compile("|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS, key=len, reverse=True)))
_FULLWIDTH_OFFSET = 0xFEE0  # '!'..'~' -> '！'..'～': '[' (U+005B) -> '［' (U+FF3B); '<' -> '＜' (U+FF1C)
_WORD_JOINER = "\u2060"


def defuse(token: str) -> str:
    """One token's spelling made inert, the project's one escape (`escape_special_tokens`): its first
    character replaced by the full-width look-alike, or, where it has none (not printable ASCII), followed
    by a word joiner."""
    first = token[0]
    if "!" <= first <= "~":
        return chr(ord(first) + _FULLWIDTH_OFFSET) + token[1:]
    return first + _WORD_JOINER + token[1:]


def escape_special_tokens(text: str) -> str:
    """Data text with every OneGen special token defused: the token's first character ('[' or '<') is
    replaced by its full-width look-alike ('[RQ]' -> '［RQ]', '</FINAL-ANSWER>' -> '＜/FINAL-ANSWER>').

    The one escape of the project, chosen because it is readable, replaces one character by one (so
    character spans into the text, ELEVANT's mention offsets, stay valid), matches no added token of any
    tokenizer (added tokens match raw text exactly), and is idempotent."""
    return _SPECIAL.sub(lambda m: defuse(m.group()), text)


def special_tokens_in(text: str) -> list[str]:
    """The OneGen special tokens spelled in `text`, in order."""
    return _SPECIAL.findall(text)


class ExampleError(ValueError):
    """A malformed training example, located by example id and field (`segments[3].text`); the training
    file reader adds file and line."""

    def __init__(self, example_id: str, field: str, message: str, text: str | None = None) -> None:
        self.example_id, self.field, self.message = example_id, field, message
        super().__init__(text or f"example {example_id!r}: field '{field}': {message}")

    def __reduce__(self):  # picklable across DataLoader / Ray workers
        return (type(self), (self.example_id, self.field, self.message, str(self)))


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
        """Parse the JSON form, checking every field's type (ids, texts and units are strings, lists are
        lists); an `ExampleError` names `where` (file and line), the field and what is wrong."""
        ex_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else "?"
        f = _Fields(ex_id, where)
        segments: list[Segment] = []
        for i, s in enumerate(f.get(data, "segments", list)):
            if isinstance(s, dict) and "retrieval" in s:
                segments.append(Retrieval(f.get(s, "retrieval", str, f"segments[{i}]")))
            else:
                segments.append(Text(f.get(s, "text", str, f"segments[{i}]"),
                                     f.get(s, "generated", bool, f"segments[{i}]")))
        queries = tuple(
            Query(f.get(q, "id", str, f"queries[{i}]"), f.strings(q, "positives", f"queries[{i}]"),
                  f.strings(q, "negatives", f"queries[{i}]", optional=True))
            for i, q in enumerate(f.get(data, "queries", list, optional=True))
        )
        documents = []
        for i, d in enumerate(f.get(data, "documents", list, optional=True)):
            ctx = f"documents[{i}]"
            granularity = f.get(d, "granularity", str, ctx, optional=True) or "document"
            if granularity not in ("document", "sentence"):
                raise f.error(f"{ctx}.granularity", f"{ctx}: field 'granularity' must be 'document' or 'sentence', "
                                                    f"got {granularity!r}")
            units = f.strings(d, "units", ctx)
            if not units:
                raise f.error(f"{ctx}.units", f"{ctx}: field 'units' must not be empty")
            documents.append(Document(f.get(d, "id", str, ctx), units, f.get(d, "title", str, ctx, optional=True) or "",
                                      granularity))
        meta = f.get(data, "meta", dict, optional=True)
        try:
            return cls(id=f.get(data, "id", str), task=f.get(data, "task", str), segments=tuple(segments),
                       queries=queries, documents=tuple(documents), meta=meta if meta is not None else {})
        except ExampleError as e:  # the structural checks: say where
            raise ExampleError(e.example_id, e.field, e.message, text=f"{where}: {e}") from None


class _Fields:
    """Typed access to the JSON form's fields; errors keep the message format `{where}: {ctx}: field …`."""

    def __init__(self, example_id: str, where: str) -> None:
        self.example_id, self.where = example_id, where

    def error(self, field: str, message: str) -> "ExampleError":
        return ExampleError(self.example_id, field, message, text=f"{self.where}: {message}")

    def get(self, obj: Any, name: str, typ: type, ctx: str = "", optional: bool = False) -> Any:
        at = f"{ctx}: " if ctx else ""
        full = f"{ctx}.{name}" if ctx else name
        if not isinstance(obj, dict):
            raise self.error(ctx or "<example>", f"{at}expected an object, got {type(obj).__name__}")
        if name not in obj or (optional and obj[name] is None):
            if optional:
                return typ()
            raise self.error(full, f"{at}field '{name}' is missing")
        value = obj[name]
        if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
            raise self.error(full, f"{at}field '{name}' must be {typ.__name__}, got {type(value).__name__}")
        return value

    def strings(self, obj: Any, name: str, ctx: str, optional: bool = False) -> tuple[str, ...]:
        items = self.get(obj, name, list, ctx, optional)
        for k, v in enumerate(items):
            if not isinstance(v, str):
                raise self.error(f"{ctx}.{name}[{k}]", f"{ctx}: field '{name}[{k}]' must be str, got {type(v).__name__}")
        return tuple(items)


# Markup pairs, and whether the model writes them (generated segment) or the engine pastes them.
_PAIRS = {LOC_OPEN: LOC_CLOSE, PARAGRAPH_OPEN: PARAGRAPH_CLOSE, FINAL_OPEN: FINAL_CLOSE, MENTION_OPEN: MENTION_CLOSE}
_CLOSERS = {close: open_ for open_, close in _PAIRS.items()}
_PASTED = {PARAGRAPH_OPEN}


def _check_markup(ex_id: str, i: int, seg: Text) -> int:
    """Markup inside one text segment is well formed: each tag pair opens and closes in the segment,
    never nested, in a segment of the right kind (a passage is pasted, the rest is generated); [RQ],
    [RD] and <CON> never appear in text. Returns the number of final-answer blocks."""
    where = f"segments[{i}].text"
    opened: str | None = None
    finals = 0
    for tok in special_tokens_in(seg.text):
        if tok in (RQ, RD):
            # Retrieval tokens must come from Retrieval segments so their positions are known.
            raise ExampleError(ex_id, where, f"contains a literal {tok}; use a Retrieval segment")
        if tok == CON:
            raise ExampleError(ex_id, where, f"{CON} must be a segment of its own (given, right after a Retrieval)")
        if tok in _PAIRS:
            if opened is not None:
                raise ExampleError(ex_id, where, f"{tok} inside {opened}…{_PAIRS[opened]}")
            if (tok in _PASTED) == seg.generated:
                kind = "pasted (generated: false)" if tok in _PASTED else "generated (generated: true)"
                raise ExampleError(ex_id, where, f"{tok} belongs in a {kind} segment")
            opened, finals = tok, finals + (tok == FINAL_OPEN)
        elif _CLOSERS[tok] != opened:
            raise ExampleError(ex_id, where, f"{tok} without its {_CLOSERS[tok]}")
        else:
            opened = None
    if opened is not None:
        raise ExampleError(ex_id, where, f"{opened} is not closed by {_PAIRS[opened]} in the same segment")
    return finals


def validate_example(ex: TrainingExample) -> None:
    """Structural checks: markup only where the structure puts it (see the module docstring), every
    [RQ] has a query, every label names a unit of the example, ids are unique."""
    fail = lambda field, message: ExampleError(ex.id, field, message)  # noqa: E731
    first = ex.segments[0] if ex.segments else None
    if isinstance(first, Text) and not first.generated and special_tokens_in(first.text):
        # the prompt (encode_example, SegmentTokenizer.prompt) is data text, escaped when tokenised
        raise fail("segments[0].text", f"the prompt contains a literal {special_tokens_in(first.text)[0]} "
                                       "(data text must be escaped: escape_special_tokens)")
    finals = 0
    for i, seg in enumerate(ex.segments):
        if not isinstance(seg, Text):
            continue
        if seg.text == CON:
            if seg.generated or i == 0 or not isinstance(ex.segments[i - 1], Retrieval):
                raise fail(f"segments[{i}]", f"{CON} is a given segment right after a Retrieval")
            continue
        finals += _check_markup(ex.id, i, seg)
    if finals > 1:
        raise fail("segments", f"{finals} {FINAL_OPEN} blocks; an example has at most one final answer")
    doc_ids = [d.id for d in ex.documents]
    if len(set(doc_ids)) != len(doc_ids):
        dup = next(d for d in doc_ids if doc_ids.count(d) > 1)
        raise fail("documents", f"duplicate document id {dup!r}")
    for j, d in enumerate(ex.documents):
        for name, text in (("title", d.title), *((f"units[{k}]", u) for k, u in enumerate(d.units))):
            found = special_tokens_in(text)
            if found:
                raise fail(f"documents[{j}].{name}", f"document {d.id!r} contains a literal {found[0]} "
                                                     "(data text must be escaped: escape_special_tokens)")
    query_ids = [q.id for q in ex.queries]
    if len(set(query_ids)) != len(query_ids):
        raise fail("queries", "duplicate query ids")
    used = [s.query_id for s in ex.segments if isinstance(s, Retrieval)]
    for qid in used:
        if qid not in query_ids:
            raise fail("segments", f"[RQ] names query {qid!r} that has no labels in 'queries'")
    units = {u for d in ex.documents for u in d.unit_ids()}
    for k, q in enumerate(ex.queries):
        for kind, ids in (("positives", q.positives), ("negatives", q.negatives)):
            unknown = [u for u in ids if u not in units]
            if unknown:
                raise fail(f"queries[{k}].{kind}", f"query {q.id!r} names unknown units {unknown[:3]}")
        if set(q.positives) & set(q.negatives):
            raise fail(f"queries[{k}]", f"query {q.id!r} has units both positive and negative")
