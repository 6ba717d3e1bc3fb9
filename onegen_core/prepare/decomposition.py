"""LLM decomposition of multi-hop questions into retrieval steps (OneGen App. G.1, Fig. 13): the prompt,
the answer's schema and its strict parser, the no-LLM heuristic, and the reader of the decompositions
file that the annotate stage writes and the label stage reads.

Each HotpotQA/2Wiki training question is shown to an instruction LLM together with its answer and its
related (supporting) documents; the LLM writes the sub-questions, the document each one needs, the
sub-answers and the final answer. Those steps become the hops of a training example
(:class:`onegen_core.prepare.multihop.Hop`, via :func:`to_hops`).

A wrong document reference would silently teach the model to retrieve the wrong passage, so
:func:`parse_decomposition` rejects, with a countable reason, anything it cannot resolve against the
record itself. Standard library only: the LLM clients, the append-only answer cache and the runner
that fans requests out live in ``tasks/`` (annotators, annotation_cache, annotation_runner).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onegen_core.data.errors import DataError
from onegen_core.data.multihop import MultiHopRecord, Paragraph
from onegen_core.data.strict_json import read_jsonl
from onegen_core.prepare.skips import Skips

if TYPE_CHECKING:  # the reconstruction module imports torch: only needed by to_hops, imported there
    from onegen_core.prepare.multihop import Hop

__all__ = [
    "DECOMPOSITION_PROMPT",
    "REJECTION_REASONS",
    "AnnotationRejected",
    "Decomposition",
    "Step",
    "build_prompt",
    "heuristic_decomposition",
    "nonblank_text",
    "parse_decomposition",
    "prompt_documents",
    "prompt_hash",
    "read_decompositions",
    "to_hops",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- prompt

# The paper's Fig. 13 prompt, in its format: the question, its answer and the related documents go in;
# the answer comes back as numbered <SUB-QUESTION-k>/<CORRESPONDING-DOC-k>/<SUB-ANSWER-k> tags and one
# <FINAL-ANSWER>, after a one-shot example. The figure's tags and structure are the paper's; its exact
# wording and example could not be retrieved offline (neither the paper's appendix nor the upstream code
# carries the text), so the instruction sentences and the example below are ours. Documents are numbered
# so that a reference is unambiguous even when titles are long or similar; the parser also accepts titles.
DECOMPOSITION_PROMPT = """Decompose a multi-hop question into sub-questions. You are given the question, its correct answer and the documents needed to answer it. Write the sub-questions a reader answers one after another to reach the answer; each one must be answerable from exactly one of the documents. For each sub-question k, write the sub-question, the number of the document it needs and its answer as found in that document; later sub-questions may use earlier answers. Finish with the final answer to the question. Reply with the tags only, as in the example.

### Example
Question: Which country is the director of the film "Inception" from?
Answer: United Kingdom
Documents:
[1] Inception: Inception is a 2010 science fiction film written and directed by Christopher Nolan.
[2] Christopher Nolan: Christopher Nolan is a British-American filmmaker, born in London, United Kingdom.
<SUB-QUESTION-1>Who directed the film Inception?</SUB-QUESTION-1>
<CORRESPONDING-DOC-1>[1]</CORRESPONDING-DOC-1>
<SUB-ANSWER-1>Christopher Nolan</SUB-ANSWER-1>
<SUB-QUESTION-2>Which country is Christopher Nolan from?</SUB-QUESTION-2>
<CORRESPONDING-DOC-2>[2]</CORRESPONDING-DOC-2>
<SUB-ANSWER-2>United Kingdom</SUB-ANSWER-2>
<FINAL-ANSWER>United Kingdom</FINAL-ANSWER>

### Task
Question: {question}
Answer: {answer}
Documents:
{documents}
"""


def prompt_documents(record: MultiHopRecord) -> tuple[Paragraph, ...]:
    """The related documents shown to the LLM, in the order they are numbered ([1], [2], ...).

    They are the supporting paragraphs, in supporting-facts order: every step must land on a
    paragraph with gold sentences, or the hop it becomes has no positive to learn from. The parser
    calls this too, so prompt numbering and reference resolution cannot drift apart.
    """
    return tuple(record.paragraph(title) for title in record.supporting_titles())


def build_prompt(record: MultiHopRecord) -> str:
    """The decomposition prompt for one record (documents numbered and titled)."""
    documents = "\n".join(
        f"[{number}] {paragraph.title}: {paragraph.text().strip()}"
        for number, paragraph in enumerate(prompt_documents(record), start=1)
    )
    return DECOMPOSITION_PROMPT.format(question=record.question.strip(), answer=record.answer.strip(),
                                       documents=documents)


def prompt_hash(prompt: str, model_name: str) -> str:
    """A short, stable digest of what was asked and of whom: a changed template, record or model
    gives a new cache key, so stale answers are never reused."""
    digest = hashlib.sha256(f"{model_name}\x00{prompt}".encode("utf-8")).hexdigest()
    return digest[:20]


# --------------------------------------------------------------------------- decomposition


@dataclass(frozen=True)
class Step:
    """One retrieval step: the document it needs and, when an LLM wrote it, its question and answer."""

    sub_question: str | None
    doc_title: str
    sub_answer: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"sub_question": self.sub_question, "doc_title": self.doc_title, "sub_answer": self.sub_answer}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "step") -> Step:
        """Inverse of :meth:`to_dict`; ``ValueError`` naming the field for anything malformed."""
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
        return cls(
            sub_question=_optional_text(raw, "sub_question", where),
            doc_title=nonblank_text(raw, "doc_title", where),
            sub_answer=_optional_text(raw, "sub_answer", where),
        )


@dataclass(frozen=True)
class Decomposition:
    """A question's steps in answering order, and the final answer."""

    example_id: str
    steps: tuple[Step, ...]
    final_answer: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "example_id": self.example_id,
            "steps": [step.to_dict() for step in self.steps],
            "final_answer": self.final_answer,
        }

    @classmethod
    def from_dict(cls, raw: Any, where: str = "decomposition") -> Decomposition:
        """Inverse of :meth:`to_dict`; ``ValueError`` naming the field for anything malformed."""
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
        steps = raw.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ValueError(f"{where}: field 'steps' must be a non-empty array")
        return cls(
            example_id=nonblank_text(raw, "example_id", where),
            steps=tuple(Step.from_dict(s, f"{where}.steps[{i}]") for i, s in enumerate(steps)),
            final_answer=nonblank_text(raw, "final_answer", where),
        )


def nonblank_text(raw: dict, key: str, where: str) -> str:
    """The value of field `key`: a string that is not blank; a `ValueError` naming `where` and the
    field otherwise (the annotation cache reads its results' ids with the same rule)."""
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _optional_text(raw: dict, key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a string or null, got {type(value).__name__}")
    return value


def read_decompositions(path: str | os.PathLike, prepared_ids: Container[str],
                        skips: Skips) -> dict[str, tuple[Decomposition, str]]:
    """The decompositions file annotate writes: example id → (decomposition, "file:line"), in file order.
    Bytes that are not UTF-8, a line that is not JSON (`read_jsonl`) and a malformed decomposition are
    `DataError`s naming file and line; a decomposition for a record that was not prepared is one too
    (annotate and prepare disagree); a second decomposition of one example is skipped and counted in
    `skips` (it would train twice)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: decompositions missing; run `dvc repro annotate`")
    out: dict[str, tuple[Decomposition, str]] = {}
    for n, raw in read_jsonl(path):
        where = f"{path}:{n}"
        d = _decomposition_at(raw, str(path), n)
        if d.example_id not in prepared_ids:
            raise DataError(str(path), f"line {n}", "example_id",
                            f"{d.example_id!r} is not a prepared record (re-run annotate after prepare)")
        if d.example_id in out:
            skips.add("multihop", where, f"duplicate decomposition of {d.example_id!r} "
                                         f"(first at {out[d.example_id][1]}); kept the first")
            continue
        out[d.example_id] = (d, where)
    return out


def _decomposition_at(raw: Any, file: str, n: int) -> Decomposition:
    """Line `n`'s decomposition; its `ValueError` becomes a `DataError` naming the field it names
    (`field 'x'` or `steps[i]`), else `<record>`."""
    where = f"{file}:{n}"
    try:
        return Decomposition.from_dict(raw, where=where)
    except ValueError as e:
        field = re.search(r"field '([^']+)'", str(e)) or re.search(r"(steps\[\d+\])", str(e))
        raise DataError(file, f"line {n}", field.group(1) if field else "<record>",
                        str(e).removeprefix(f"{where}: ")) from None


def heuristic_decomposition(record: MultiHopRecord) -> Decomposition:
    """The embedded default, no LLM: one implicit step (no sub-question, no sub-answer) per supporting
    paragraph in supporting-facts order, and the dataset's answer as final answer."""
    steps = tuple(Step(sub_question=None, doc_title=title, sub_answer=None) for title in record.supporting_titles())
    return Decomposition(example_id=record.id, steps=steps, final_answer=record.answer)


def to_hops(decomposition: Decomposition, record: MultiHopRecord) -> list[Hop]:
    """The reconstruction hops of a decomposition: each step's positives are the supporting
    sentences of its document; a step naming a paragraph the record lacks is a `ValueError`. (Imports
    the torch-based reconstruction module only when called.)"""
    from onegen_core.prepare.multihop import Hop

    hops = []
    titles = {p.title for p in record.context}
    for i, step in enumerate(decomposition.steps):
        if step.doc_title not in titles:  # a ValueError naming the field, which the label stage counts as a skip
            raise ValueError(f"field 'steps[{i}].doc_title': {step.doc_title!r} names no paragraph of record "
                             f"{record.id!r}")
        sentences = tuple(sorted({f.sentence for f in record.supporting_facts if f.title == step.doc_title}))
        hops.append(Hop(title=step.doc_title, supporting_sentences=sentences,
                        sub_question=step.sub_question, sub_answer=step.sub_answer))
    return hops


# --------------------------------------------------------------------------- parsing

REJECTION_REASONS: tuple[str, ...] = (
    "malformed_tags",  # a <SUB-QUESTION-k>/<CORRESPONDING-DOC-k>/<SUB-ANSWER-k> tag unbalanced or repeated
    "no_steps",  # no numbered <SUB-QUESTION-k> … tags at all
    "empty_step",  # a step k whose tags hold nothing
    "missing_sub_question",
    "missing_document",  # a sub-question without a document
    "missing_sub_answer",
    "unknown_document",  # a reference that resolves to no paragraph of the record's context
    "distractor_document",  # a context paragraph that is not one of the related (supporting) documents
    "missing_final_answer",
)


class AnnotationRejected(ValueError):
    """An LLM answer that cannot be used; ``reason`` is one of :data:`REJECTION_REASONS` (counted),
    ``detail`` says what exactly was wrong."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):
        return (type(self), (self.reason, self.detail))


_FLAGS = re.IGNORECASE | re.DOTALL
_FIELDS = (("sub_question", "SUB-QUESTION"), ("document", "CORRESPONDING-DOC"), ("sub_answer", "SUB-ANSWER"))
_NUMBERED_TAG = re.compile(r"<(/?)(SUB-QUESTION|CORRESPONDING-DOC|SUB-ANSWER)-(\d+)>", re.IGNORECASE)
_FINAL = re.compile(r"<FINAL-ANSWER>(.*?)</FINAL-ANSWER>", _FLAGS)
_NUMBERED = re.compile(r"^(?:doc(?:ument)?\s*)?\[?\s*(\d+)\s*\]?\s*[:.\-–]?\s*(.*)$", _FLAGS)


def _steps_tags(text: str) -> dict[int, dict[str, str]]:
    """{k: {field: stripped content}} of every numbered tag; unbalanced or repeated tags are rejected."""
    opened: dict[tuple[str, int], int] = {}
    closed: dict[tuple[str, int], int] = {}
    for m in _NUMBERED_TAG.finditer(text):
        key = (m.group(2).upper(), int(m.group(3)))
        (closed if m.group(1) else opened)[key] = (closed if m.group(1) else opened).get(key, 0) + 1
    for key in set(opened) | set(closed):
        if opened.get(key, 0) != closed.get(key, 0):
            raise AnnotationRejected("malformed_tags", f"<{key[0]}-{key[1]}> opened {opened.get(key, 0)} times, "
                                                        f"closed {closed.get(key, 0)} times")
        if opened[key] > 1:
            raise AnnotationRejected("malformed_tags", f"step {key[1]} has {opened[key]} <{key[0]}-{key[1]}> tags")
    steps: dict[int, dict[str, str]] = {}
    for field, tag in _FIELDS:
        for m in re.finditer(rf"<{tag}-(\d+)>(.*?)</{tag}-\1>", text, _FLAGS):
            steps.setdefault(int(m.group(1)), {})[field] = m.group(2).strip()
    return steps


def _resolve_document(reference: str, record: MultiHopRecord, step_no: int) -> str:
    """The title a step's ``<CORRESPONDING-DOC-k>`` refers to: ``[n]``, ``[n] Title`` or an exact title."""
    related = prompt_documents(record)
    titles = [p.title for p in related]
    cleaned = reference.strip().strip("\"'")
    for title in titles:  # an exact title wins (titles such as "1984" look like numbers)
        if cleaned.casefold() == title.casefold():
            return title
    if any(p.title.casefold() == cleaned.casefold() for p in record.context):
        raise AnnotationRejected("distractor_document", f"step {step_no} uses {cleaned!r}, not a related document")
    numbered = _NUMBERED.match(cleaned)
    if numbered:
        number, named = int(numbered.group(1)), numbered.group(2).strip().strip("\"'")
        if not 1 <= number <= len(related):
            raise AnnotationRejected("unknown_document",
                                     f"step {step_no} refers to document [{number}], there are {len(related)}")
        title = titles[number - 1]
        if named and named.casefold() != title.casefold():
            raise AnnotationRejected("unknown_document",
                                     f"step {step_no}: document [{number}] is {title!r}, not {named!r}")
        return title
    raise AnnotationRejected("unknown_document", f"step {step_no} refers to {reference!r}, not in the context")


def _parse_step(tags: dict[str, str], record: MultiHopRecord, step_no: int) -> Step:
    if not any(tags.values()):
        raise AnnotationRejected("empty_step", f"step {step_no} is empty")
    sub_question, reference, sub_answer = (tags.get(f) or None for f, _ in _FIELDS)
    if sub_question is None:
        raise AnnotationRejected("missing_sub_question", f"step {step_no} has no <SUB-QUESTION-{step_no}>")
    if reference is None:
        raise AnnotationRejected("missing_document",
                                 f"step {step_no} ({sub_question!r}) has no <CORRESPONDING-DOC-{step_no}>")
    if sub_answer is None:
        raise AnnotationRejected("missing_sub_answer", f"step {step_no} has no <SUB-ANSWER-{step_no}>")
    return Step(sub_question=sub_question, doc_title=_resolve_document(reference, record, step_no),
                sub_answer=sub_answer)


def parse_decomposition(text: str, record: MultiHopRecord) -> Decomposition:
    """Parse an LLM answer written in the :data:`DECOMPOSITION_PROMPT` (Fig. 13) format, strictly.

    Text outside the tags (a preamble, a code fence) is ignored and tag names are case-insensitive;
    steps must be numbered 1..n without gaps, each complete, and every document reference must resolve
    to one of the record's related documents. Raises :class:`AnnotationRejected` otherwise.
    """
    steps_tags = _steps_tags(text)
    if not steps_tags:
        raise AnnotationRejected("no_steps", "no <SUB-QUESTION-k> block")
    numbers = sorted(steps_tags)
    if numbers != list(range(1, len(numbers) + 1)):
        raise AnnotationRejected("malformed_tags", f"steps are numbered {numbers}, expected 1..{len(numbers)}")
    steps = tuple(_parse_step(steps_tags[k], record, k) for k in numbers)
    finals = _FINAL.findall(text)
    if len(finals) > 1:
        raise AnnotationRejected("malformed_tags", f"{len(finals)} <FINAL-ANSWER> tags")
    if not finals or not finals[0].strip():
        raise AnnotationRejected("missing_final_answer", "no <FINAL-ANSWER>")
    return Decomposition(example_id=record.id, steps=steps, final_answer=finals[0].strip())
