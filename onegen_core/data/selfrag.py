"""Strict loader for the Self-RAG training format (``selfrag/selfrag_train_data``, Asai et al. 2023).

Records are ``{"instruction", "output", "input"?, "id"?, "dataset_name"?}`` in a JSON array or JSON
Lines (the published ``train.jsonl``). The ``output`` interleaves text with reflection tokens, as built
by ``data_creation/generator/postprocess_data.py`` of AkariAsai/self-rag:

    [No Retrieval]{sentence}                                         no evidence needed
    [Retrieval]<paragraph>{title}\\n{text}</paragraph>[Relevant]{sentence}{support}
    [Retrieval]<paragraph>{title}\\n{text}</paragraph>[Irrelevant]{sentence}
    [Continue to Use Evidence]{sentence}                             keep the previous passage
    {sentence}                                                       (sentences the pipeline skipped)
    ... then one [Utility:1..5] for the whole answer

where ``{support}`` is ``[Fully supported]``, ``[Partially supported]`` or ``[No support /
Contradictory]``. Parsing turns the string into typed segments so that reconstruction knows, from
structure, which spans the model writes and which the retriever pastes.

Why strict: a stray ``</paragraph>`` or a misspelt token (``[Utility:6]``, ``[Retrieve]``) would turn
retrieved text into training targets or drop a retrieval step. Those raise :class:`DataError` naming
the file, the record and the field (``output``, with the character offset in the message). Brackets
that do not look like reflection tokens (``[1]``, ``arr[i]``) are ordinary text.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Union

from .errors import DataError
from .strict_json import OnError, Raw, Where, check_on_error, collect_records, iter_raw, json_type, required_text, typed

__all__ = [
    "CONTINUE_EVIDENCE",
    "IRRELEVANT",
    "NO_RETRIEVAL",
    "PARAGRAPH_CLOSE",
    "PARAGRAPH_OPEN",
    "RELEVANCE_TOKENS",
    "RELEVANT",
    "RETRIEVAL",
    "RETRIEVAL_DECISIONS",
    "SUPPORT_TOKENS",
    "UTILITY_TOKENS",
    "SelfRagExample",
    "SelfRagParagraph",
    "SelfRagSegment",
    "SelfRagText",
    "SelfRagToken",
    "load_selfrag",
    "load_selfrag_with_report",
    "parse_selfrag_output",
]

# The Self-RAG file format's markup. <paragraph> equals onegen_core.method.tokens.PARAGRAPH_OPEN/CLOSE; it is
# spelt here because it is part of the file format, and importing tokens would pull torch into the
# data package.
PARAGRAPH_OPEN, PARAGRAPH_CLOSE = "<paragraph>", "</paragraph>"
RETRIEVAL = "[Retrieval]"
NO_RETRIEVAL = "[No Retrieval]"
CONTINUE_EVIDENCE = "[Continue to Use Evidence]"
RELEVANT, IRRELEVANT = "[Relevant]", "[Irrelevant]"
RETRIEVAL_DECISIONS: tuple[str, ...] = (RETRIEVAL, NO_RETRIEVAL, CONTINUE_EVIDENCE)
RELEVANCE_TOKENS: tuple[str, ...] = (RELEVANT, IRRELEVANT)
SUPPORT_TOKENS: tuple[str, ...] = ("[Fully supported]", "[Partially supported]", "[No support / Contradictory]")
UTILITY_TOKENS: tuple[str, ...] = tuple(f"[Utility:{k}]" for k in range(1, 6))
_REFLECTION_TOKENS = frozenset(RETRIEVAL_DECISIONS + RELEVANCE_TOKENS + SUPPORT_TOKENS + UTILITY_TOKENS)

_FIELD_RECORD = "<record>"
_FIELD_ENCODING = "<encoding>"

# Markup scanned for: paragraph tags and any bracketed run without brackets or newlines inside.
_MARKUP = re.compile(r"</?paragraph>|\[[^\[\]\n]{1,60}\]", re.IGNORECASE)
# Bracketed text that is meant as a reflection token but is not one of the known tokens
# ("[Retrieve]", "[Utility:6]", "[relevant]", "[No Support]", "[IsRel]"...).
_REFLECTION_LIKE = re.compile(
    r"\s*(no\s*retriev\w*|retriev\w*|continue\s+to\s+use\s+evidence|relevant|irrelevant|utility\s*:.*"
    r"|fully\s+supported|partially\s+supported|no\s+support.*|is_?(rel|sup|use)|retrieve\s*=.*)\s*\Z",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class SelfRagText:
    """Answer text the model writes."""

    text: str


@dataclass(frozen=True)
class SelfRagToken:
    """A reflection token the model writes: a retrieval decision, a support or a utility judgement."""

    token: str

    @property
    def kind(self) -> str:
        """``"retrieval"``, ``"support"`` or ``"utility"``."""
        if self.token in RETRIEVAL_DECISIONS:
            return "retrieval"
        return "support" if self.token in SUPPORT_TOKENS else "utility"


@dataclass(frozen=True)
class SelfRagParagraph:
    """A retrieved passage (pasted by the retriever, never a training target) with the relevance token
    the model writes right after it, and the support token that closes its sentence (relevant only)."""

    text: str  # between <paragraph> and </paragraph>: "{title}\n{text}" in the published data
    relevance: str  # RELEVANT or IRRELEVANT
    support: str | None = None  # copied from the SelfRagToken that follows the sentence, if any

    @property
    def is_relevant(self) -> bool:
        return self.relevance == RELEVANT

    @property
    def title(self) -> str:
        """The passage title: the first line when the text has more than one, else ``""``."""
        head, sep, body = self.text.partition("\n")
        return head.strip() if sep and body.strip() else ""

    @property
    def body(self) -> str:
        """The passage text without its title line."""
        head, sep, body = self.text.partition("\n")
        return body if sep and body.strip() else self.text

    def markup(self) -> str:
        """The passage as it appears in the output, relevance token excluded."""
        return f"{PARAGRAPH_OPEN}{self.text}{PARAGRAPH_CLOSE}"


SelfRagSegment = Union[SelfRagText, SelfRagToken, SelfRagParagraph]


@dataclass(frozen=True)
class SelfRagExample:
    """One validated Self-RAG training record; ``segments`` spell ``output`` exactly (see :meth:`output`)."""

    id: str
    instruction: str
    input: str
    segments: tuple[SelfRagSegment, ...]
    dataset_name: str | None = None

    def output(self) -> str:
        """The original ``output`` string, rebuilt from the segments."""
        parts = []
        for seg in self.segments:
            if isinstance(seg, SelfRagText):
                parts.append(seg.text)
            elif isinstance(seg, SelfRagToken):
                parts.append(seg.token)
            else:
                parts.append(seg.markup() + seg.relevance)
        return "".join(parts)

    def paragraphs(self) -> tuple[SelfRagParagraph, ...]:
        """The retrieved passages in order; passage k is the evidence of retrieval k."""
        return tuple(s for s in self.segments if isinstance(s, SelfRagParagraph))

    @property
    def utility(self) -> int | None:
        """The ``[Utility:k]`` score of the answer, if the output has one."""
        for seg in self.segments:
            if isinstance(seg, SelfRagToken) and seg.kind == "utility":
                return int(seg.token[len("[Utility:"):-1])
        return None


# --------------------------------------------------------------------------- output parsing


class _OutputError(ValueError):
    """A malformed ``output``; the loader turns it into a DataError on field ``output``."""


def _bracket_token(match: str, pos: int) -> str | None:
    """The reflection token ``match`` is, None if it is ordinary text; raise on a near miss."""
    if match in _REFLECTION_TOKENS:
        return match
    if _REFLECTION_LIKE.match(match[1:-1]):
        raise _OutputError(f"char {pos}: unknown reflection token {match!r}")
    return None


class _Parser:
    """Left-to-right scan of one output; the state is what the last structural item was."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.segments: list[SelfRagSegment] = []
        self.pending_retrieval: int | None = None  # offset of a [Retrieval] still waiting for its passage
        self.open_relevant: int | None = None  # index of a [Relevant] passage whose support is still due
        self.seen_utility = False

    def text(self, text: str) -> None:
        if not text:
            return
        if self.pending_retrieval is not None and text.strip():
            raise _OutputError(f"char {self.pending_retrieval}: {RETRIEVAL} is not followed by {PARAGRAPH_OPEN}")
        if self.segments and isinstance(self.segments[-1], SelfRagText):
            self.segments[-1] = SelfRagText(self.segments[-1].text + text)
        else:
            self.segments.append(SelfRagText(text))

    def paragraph(self, start: int) -> int:
        """Parse ``<paragraph>…</paragraph>{relevance}`` starting at ``start``; return the end offset."""
        if self.pending_retrieval is None:
            raise _OutputError(f"char {start}: {PARAGRAPH_OPEN} is not preceded by {RETRIEVAL}")
        body_start = start + len(PARAGRAPH_OPEN)
        close = self.output.find(PARAGRAPH_CLOSE, body_start)
        reopen = self.output.find(PARAGRAPH_OPEN, body_start)
        if close < 0 or 0 <= reopen < close:
            raise _OutputError(f"char {start}: {PARAGRAPH_OPEN} is not closed by {PARAGRAPH_CLOSE}")
        text = self.output[body_start:close]
        if not text.strip():
            raise _OutputError(f"char {start}: empty paragraph")
        after = close + len(PARAGRAPH_CLOSE)
        relevance = next((t for t in RELEVANCE_TOKENS if self.output.startswith(t, after)), None)
        if relevance is None:
            raise _OutputError(f"char {after}: {PARAGRAPH_CLOSE} is not followed by {RELEVANT} or {IRRELEVANT}")
        self.close_block()
        self.pending_retrieval = None
        self.segments.append(SelfRagParagraph(text=text, relevance=relevance))
        if relevance == RELEVANT:
            self.open_relevant = len(self.segments) - 1
        return after + len(relevance)

    def token(self, token: str, pos: int) -> None:
        if self.pending_retrieval is not None:
            raise _OutputError(f"char {self.pending_retrieval}: {RETRIEVAL} is not followed by {PARAGRAPH_OPEN}")
        if self.seen_utility:
            raise _OutputError(f"char {pos}: {token} after the utility token, which must come last")
        if token in RELEVANCE_TOKENS:
            raise _OutputError(f"char {pos}: {token} does not follow a {PARAGRAPH_CLOSE}")
        if token in SUPPORT_TOKENS:
            self.support(token, pos)
        else:
            self.close_block()
            if token in UTILITY_TOKENS:
                self.seen_utility = True
            elif token == RETRIEVAL:
                self.pending_retrieval = pos
        self.segments.append(SelfRagToken(token))

    def support(self, token: str, pos: int) -> None:
        """A support token judges the sentence written after a [Relevant] passage, once."""
        if self.open_relevant is None:
            raise _OutputError(f"char {pos}: {token} does not close a sentence after a {RELEVANT} passage")
        paragraph = self.segments[self.open_relevant]
        assert isinstance(paragraph, SelfRagParagraph)
        self.segments[self.open_relevant] = SelfRagParagraph(paragraph.text, paragraph.relevance, token)
        self.open_relevant = None

    def close_block(self) -> None:
        """A new decision or passage ends the previous block: its support token can no longer come."""
        self.open_relevant = None

    def finish(self) -> tuple[SelfRagSegment, ...]:
        if self.pending_retrieval is not None:
            raise _OutputError(f"char {self.pending_retrieval}: {RETRIEVAL} is not followed by {PARAGRAPH_OPEN}")
        return tuple(self.segments)


def parse_selfrag_output(output: str) -> tuple[SelfRagSegment, ...]:
    """Split a Self-RAG ``output`` into segments; ``ValueError`` (with the char offset) if malformed.

    Rules: ``<paragraph>`` comes right after ``[Retrieval]`` (whitespace aside) and is closed by
    ``</paragraph>`` followed by ``[Relevant]`` or ``[Irrelevant]``; a support token closes the sentence
    after a ``[Relevant]`` passage; at most one utility token, last among the tokens.
    """
    parser = _Parser(output)
    cursor = 0
    while True:
        match = _MARKUP.search(output, cursor)
        if match is None:
            parser.text(output[cursor:])
            return parser.finish()
        pos, markup = match.start(), match.group()
        parser.text(output[cursor:pos])
        if markup == PARAGRAPH_OPEN:
            cursor = parser.paragraph(pos)
            continue
        if markup.lower() in (PARAGRAPH_OPEN, PARAGRAPH_CLOSE):
            what = "without an opening tag" if markup == PARAGRAPH_CLOSE else "(tags are lower-case)"
            raise _OutputError(f"char {pos}: {markup} {what}")
        token = _bracket_token(markup, pos)
        if token is None:
            parser.text(markup)
        else:
            parser.token(token, pos)
        cursor = match.end()


# --------------------------------------------------------------------------- records


def _record_id(raw: dict, position: str, where: Where) -> str:
    """The record's ``id`` (string or integer), or its position when the file has none."""
    value = raw.get("id")
    if value is None:
        return position
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise where.error("id", f"expected a non-empty string or integer, got {json_type(value)}")
    return str(value)


def _parse_record(raw: dict, position: str, where: Where) -> SelfRagExample:
    record_id = _record_id(raw, position, where)
    instruction = required_text(raw, "instruction", where)
    input_text = raw.get("input")
    input_text = "" if input_text is None else typed(input_text, str, "input", where)
    output = required_text(raw, "output", where)
    dataset_name = raw.get("dataset_name")
    if dataset_name is not None:
        typed(dataset_name, str, "dataset_name", where)
    try:
        segments = parse_selfrag_output(output)
    except _OutputError as exc:
        raise where.error("output", str(exc)) from None
    return SelfRagExample(record_id, instruction, input_text, segments, dataset_name)


def _record_label(raw: Raw) -> str:
    value = raw.value
    if isinstance(value, dict) and isinstance(value.get("id"), (str, int)) and not isinstance(value["id"], bool):
        return f"{raw.position} (id {value['id']})"
    return raw.position


def _decode(file: str, raw: Raw) -> SelfRagExample:
    if raw.error is not None:
        raise raw.error
    where = Where(file, _record_label(raw))
    if not isinstance(raw.value, dict):
        raise where.error(_FIELD_RECORD, f"expected object, got {json_type(raw.value)}")
    return _parse_record(raw.value, raw.position, where)


def _load(path: str | os.PathLike, raise_errors: bool) -> tuple[list[SelfRagExample], list[DataError]]:
    return collect_records(path, iter_raw, _decode, raise_errors)


def load_selfrag(path: str | os.PathLike, on_error: OnError = "raise") -> list[SelfRagExample]:
    """Load Self-RAG training records (JSON array or JSON Lines, local path or URL).

    Ids are not required to be unique (the published file merges several sources); a record without an
    ``id`` is named by its position (``line 12`` / ``#11``). With ``on_error="skip"`` malformed records
    are dropped; use :func:`load_selfrag_with_report` to see why.
    """
    return _load(path, check_on_error(on_error))[0]


def load_selfrag_with_report(path: str | os.PathLike) -> tuple[list[SelfRagExample], list[DataError]]:
    """Load Self-RAG records, returning the valid ones and one :class:`DataError` per excluded record."""
    return _load(path, raise_errors=False)
