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
    "FIG13_PROMPT",
    "NUMBERED_PROMPT",
    "PROMPT_STYLES",
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
    "related_doc_block",
    "answer_regex",
    "to_hops",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- prompt

# The paper's Fig. 13 prompt, verbatim (the default, `annotate.prompt: fig13`). Its words, punctuation, tags and
# one-shot example are the figure's as ../shared/paper/ extracts them, typographic apostrophes and the unmatched
# quote of SUB-ANSWER-1 included, and the spaces inside `</ANSWER >` and `</FINAL-ANSWER >`; only the layout is
# ours: the PDF's line wraps inside a sentence are joined, and each tag and its content get a line of their own
# (tests/core/test_fig13_prompt.py compares the two with runs of whitespace collapsed). The record's related
# documents fill `{related_doc}` in the example's own form (`<RELATED-DOC-k>` / `wiki title:` / `content:`).
FIG13_PROMPT = """You excel in question decomposition. Starting with a question, related documents, and the final answer corresponding to the question, your task is to break down the question into sub-questions. Each sub-question should be connected to relevant documents, leading to the generation of answers for each sub-question. It’s important to consider potential connections between these sub-questions.

Here’s an example input:
<QUESTION>
Are both magazines, the Woman’s Viewpoint and Pick Me Up, British publications?
</QUESTION>
<ANSWER> no </ANSWER >
<RELATED-DOC-1>
wiki title: Pick Me Up (magazine)
content: Pick Me Up! is a British weekly women’s magazine that is published through the IPC Media group.
</RELATED-DOC-1>
<RELATED-DOC-2>
wiki title: Woman’s Viewpoint (magazine)
content: The Woman’s Viewpoint was a woman’s magazine founded in Texas in 1923 and published by Florence M. Sterling. The magazine was progressive and ran from 1923 to 1927.
</RELATED-DOC-2>

Here’s an example output for the given input:
<SUB-QUESTION-1>
Which country is the magazine Woman’s Viewpoint published in?
</SUB-QUESTION-1>
<CORRESPONDING-DOC-1>
RELATED-DOC-2
</CORRESPONDING-DOC-1>
<SUB-ANSWER-1>
The magazine "Woman’s Viewpoint’ was published in Texas, a state located in the United States.
</SUB-ANSWER-1>
<SUB-QUESTION-2>
Which country is the magazine Pick Me Up published in?
</SUB-QUESTION-2>
<CORRESPONDING-DOC-2>
RELATED-DOC-1
</CORRESPONDING-DOC-2>
<SUB-ANSWER-2>
The magazine Pick Me Up! is published in the United Kingdom.
</SUB-ANSWER-2>
<FINAL-ANSWER>
No, they are not both British publications. “Pick Me Up!” is indeed a British magazine published in the United Kingdom. However, “Woman’s Viewpoint” was published in Texas, which is in the United States, so it is an American publication.
</FINAL-ANSWER >

Here is an input you need to process:
<QUESTION> {question} </QUESTION>
<ANSWER> {answer} </ANSWER>
{related_doc}

Please format your output as shown above and refrain from including any additional content."""

# An alternative, kept only as the named setting `annotate.prompt: numbered` (it was this project's prompt before
# the paper's text was at hand): the same answer tags, a shorter instruction of ours, an example of ours, and the
# documents numbered `[k] Title: text`. Never the default: the paper's main setting is Fig. 13.
NUMBERED_PROMPT = """Decompose a multi-hop question into sub-questions. You are given the question, its correct answer and the documents needed to answer it. Write the sub-questions a reader answers one after another to reach the answer; each one must be answerable from exactly one of the documents. For each sub-question k, write the sub-question, the number of the document it needs and its answer as found in that document; later sub-questions may use earlier answers. Finish with the final answer to the question. Reply with the tags only, as in the example.

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

PROMPT_STYLES: tuple[str, ...] = ("fig13", "numbered")
DECOMPOSITION_PROMPT = FIG13_PROMPT  # the default prompt (kept under its old name for readers of the API)


def prompt_documents(record: MultiHopRecord) -> tuple[Paragraph, ...]:
    """The related documents shown to the LLM, in the order they are numbered (RELATED-DOC-1, -2, ...).

    They are the supporting paragraphs, in supporting-facts order: every step must land on a
    paragraph with gold sentences, or the hop it becomes has no positive to learn from. The parser
    calls this too, so prompt numbering and reference resolution cannot drift apart.
    """
    return tuple(record.paragraph(title) for title in record.supporting_titles())


def related_doc_block(number: int, paragraph: Paragraph) -> str:
    """One `<RELATED-DOC-k>` block of the Fig. 13 prompt, in the form of the figure's example."""
    return (f"<RELATED-DOC-{number}>\nwiki title: {paragraph.title}\ncontent: {paragraph.text().strip()}\n"
            f"</RELATED-DOC-{number}>")


def build_prompt(record: MultiHopRecord, style: str = "fig13") -> str:
    """The decomposition prompt for one record: Fig. 13 (default) or the `numbered` alternative."""
    documents = prompt_documents(record)
    if style == "fig13":
        related = "\n".join(related_doc_block(k, p) for k, p in enumerate(documents, start=1))
        return FIG13_PROMPT.format(question=record.question.strip(), answer=record.answer.strip(),
                                   related_doc=related)
    if style == "numbered":
        numbered = "\n".join(f"[{k}] {p.title}: {p.text().strip()}" for k, p in enumerate(documents, start=1))
        return NUMBERED_PROMPT.format(question=record.question.strip(), answer=record.answer.strip(),
                                      documents=numbered)
    raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")


# A content: one line, no tag inside; bounded so a constrained small model cannot run on forever.
_CONTENT = r"[^<\n]{1,300}"


def answer_regex(record: MultiHopRecord, style: str = "fig13") -> str:
    """The Fig. 13 answer format of this record as a regular expression, for servers that constrain
    decoding (`annotate.structured_output`, vLLM's structured outputs): 1 to n steps for n related
    documents, numbered in order, each `<SUB-QUESTION-k>`, `<CORRESPONDING-DOC-k>` naming one of the
    record's documents as the prompt style numbers them (`RELATED-DOC-j`, or `[j]`), `<SUB-ANSWER-k>`,
    then `<FINAL-ANSWER>`; contents one line each, laid out as the figure's example. Whatever it lets
    through still goes through :func:`parse_decomposition`."""
    n = len(prompt_documents(record))
    if n < 1:
        raise ValueError(f"record {record.id!r} has no related document to decompose over")
    refs = "|".join(f"RELATED-DOC-{j}" if style == "fig13" else rf"\[{j}\]" for j in range(1, n + 1))

    def step(k: int) -> str:
        return (f"<SUB-QUESTION-{k}>\n{_CONTENT}\n</SUB-QUESTION-{k}>\n"
                f"<CORRESPONDING-DOC-{k}>\n({refs})\n</CORRESPONDING-DOC-{k}>\n"
                f"<SUB-ANSWER-{k}>\n{_CONTENT}\n</SUB-ANSWER-{k}>\n")

    steps = ""
    for k in range(n, 1, -1):  # step 1, then optionally 2, then optionally 3 ...: nested, so numbered in order
        steps = f"({step(k)}{steps})?"
    return f"{step(1)}{steps}<FINAL-ANSWER>\n{_CONTENT}\n</FINAL-ANSWER>"


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
# Tags as a model writes them after Fig. 13, whose own example closes with `</FINAL-ANSWER >`: whitespace is
# allowed after `<`, around `/` and before `>`.
_NUMBERED_TAG = re.compile(r"<\s*(/?)\s*(SUB-QUESTION|CORRESPONDING-DOC|SUB-ANSWER)-(\d+)\s*>", re.IGNORECASE)
_FINAL = re.compile(r"<\s*FINAL-ANSWER\s*>(.*?)<\s*/\s*FINAL-ANSWER\s*>", _FLAGS)
# A reference by number: `RELATED-DOC-2` (Fig. 13's own form), `<RELATED-DOC-2>`, `related doc 2`, `[2]`, `2`,
# `Document 2`, `doc [2]`, optionally followed by the title (`[2] Beta`, `RELATED-DOC-2: Beta`).
_NUMBERED = re.compile(r"^<?\s*(?:related[-_\s]*)?(?:doc(?:ument)?)?[-_\s]*\[?\s*(\d+)\s*\]?\s*>?\s*[:.\-–]?\s*(.*)$",
                       _FLAGS)
_WIKI_TITLE = re.compile(r"^wiki\s+title\s*:\s*(.*?)\s*(?:\bcontent\s*:.*)?$", _FLAGS)


def _one_line(text: str) -> str:
    """Tag contents with the model's line wraps joined (Fig. 13 puts every content on lines of its own)."""
    return " ".join(text.split())


def _steps_tags(text: str) -> dict[int, dict[str, str]]:
    """{k: {field: content, whitespace runs joined}} of every numbered tag; unbalanced or repeated tags are
    rejected."""
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
        for m in re.finditer(rf"<\s*{tag}-(\d+)\s*>(.*?)<\s*/\s*{tag}-\1\s*>", text, _FLAGS):
            steps.setdefault(int(m.group(1)), {})[field] = _one_line(m.group(2))
    return steps


def _strip_quotes(text: str) -> str:
    return text.strip().strip("\"'\u2018\u2019\u201c\u201d").strip()


def _resolve_document(reference: str, record: MultiHopRecord, step_no: int) -> str:
    """The title a step's ``<CORRESPONDING-DOC-k>`` refers to: ``RELATED-DOC-n`` (Fig. 13), ``[n]``,
    ``[n] Title``, an exact title, or the document copied out (``wiki title: Title content: …``)."""
    related = prompt_documents(record)
    titles = [p.title for p in related]
    cleaned = _strip_quotes(reference)
    copied = _WIKI_TITLE.match(cleaned)
    if copied:
        cleaned = _strip_quotes(copied.group(1))
    for title in titles:  # an exact title wins (titles such as "1984" look like numbers)
        if cleaned.casefold() == title.casefold():
            return title
    if any(p.title.casefold() == cleaned.casefold() for p in record.context):
        raise AnnotationRejected("distractor_document", f"step {step_no} uses {cleaned!r}, not a related document")
    numbered = _NUMBERED.match(cleaned)
    if numbered:
        number = int(numbered.group(1))
        named = numbered.group(2).strip()
        if named.startswith("(") and named.endswith(")"):  # `RELATED-DOC-2 (Title)`: one pair only
            named = named[1:-1]
        named = _strip_quotes(named)
        if not 1 <= number <= len(related):
            raise AnnotationRejected("unknown_document",
                                     f"step {step_no} refers to document {number} ({reference.strip()!r}), "
                                     f"there are {len(related)}")
        title = titles[number - 1]
        if named and named.casefold() != title.casefold():
            raise AnnotationRejected("unknown_document",
                                     f"step {step_no}: document {number} is {title!r}, not {named!r}")
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

    Text outside the tags (a preamble, a code fence) is ignored, tag names are case-insensitive, whitespace
    inside a tag (`</FINAL-ANSWER >`) is allowed and a content's line wraps are joined;
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
    return Decomposition(example_id=record.id, steps=steps, final_answer=_one_line(finals[0]))
