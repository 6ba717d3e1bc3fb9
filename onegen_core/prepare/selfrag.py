"""Self-RAG single-hop data in OneGen's R→G format.

Main sequence, for an output ``[Retrieval]<paragraph>P</paragraph>[Relevant]S[Fully supported][Utility:5]``:
    ### Instruction:\\n{instruction}\\n\\n### Response:\\n      CTX (Self-RAG's own prompt template)
    [Retrieval]                                              generated (a reflection token, plain text)
    [RQ]                                                     emitted by the model; RET position
    <paragraph>{P}</paragraph>                               pasted by the engine (CTX); its last token is GEN
    [Relevant]{S}[Fully supported][Utility:5]<eos>           generated
Text and reflection tokens are written by the model; only the passages are pasted. Self-RAG's own
training masks the passage text the same way (``finetune.py`` sets its labels to -100).

Each passage is a ``Document`` (granularity "document") and the positive of the [RQ] before it. A
passage judged ``[Irrelevant]`` was still retrieved, so the sequence keeps its [RQ] and passage, but
the query gets no positives and no negatives: training that [RQ] towards a passage the data itself
calls irrelevant would teach retrieval the wrong thing. The collator counts such queries as
``queries_without_positive``.

Reflection tokens stay plain text here: they are not in ``onegen_core.method.tokens.SPECIAL_TOKENS``.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Callable, Mapping, Sequence, Union

from onegen_core.data.selfrag import SelfRagExample, SelfRagParagraph, SelfRagText, SelfRagToken
from onegen_core.method.segments import (
    Document,
    Query,
    Retrieval,
    Segment,
    Text,
    TrainingExample,
)
from onegen_core.method.tokens import PARAGRAPH_CLOSE, PARAGRAPH_OPEN
from onegen_core.prepare.data_text import escape_data_text
from onegen_core.prepare.skips import Skips

__all__ = [
    "NegativeSource",
    "corpus_passages",
    "distinct_ids",
    "escape_selfrag",
    "PROMPT_INPUT",
    "PROMPT_NO_INPUT",
    "passage_document",
    "passage_id",
    "reconstruct_selfrag",
    "reconstruct_with_negatives",
    "selfrag_prompt",
]

# Self-RAG's prompt templates (retrieval_lm/finetune.py, PROMPT_DICT): the model was trained on them.
PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"

#: Hard negatives of retrieval k (0-based, in output order): doc ids per k, or a function of k and the
#: passage that returns them.
NegativeSource = Union[Mapping[int, Sequence[str]], Callable[[int, SelfRagParagraph], Sequence[str]]]


def escape_selfrag(example: SelfRagExample) -> SelfRagExample:
    """The record with its data text escaped (`escape_special_tokens`): instruction, input, answer text
    and passages; reflection tokens are the format's structure and stay. The label stage escapes each
    record before reconstruction, which rejects a special token in data text."""
    esc = escape_data_text  # OneGen's tokens and the tokenizers' control tokens

    def seg(s):
        if isinstance(s, SelfRagText):
            return SelfRagText(esc(s.text))
        if isinstance(s, SelfRagParagraph):
            return replace(s, text=esc(s.text))
        return s

    return replace(example, instruction=esc(example.instruction), input=esc(example.input),
                   segments=tuple(seg(s) for s in example.segments))


def selfrag_prompt(example: SelfRagExample) -> str:
    """The prompt Self-RAG trains with: the ``Input`` block only when the record has a non-empty input."""
    if example.input:
        return PROMPT_INPUT.format(instruction=example.instruction, input=example.input)
    return PROMPT_NO_INPUT.format(instruction=example.instruction)


def _split_passage(text: str) -> tuple[str, str]:
    """``"{title}\\n{body}"`` (the published form) → (title, body); no title when there is one line."""
    paragraph = SelfRagParagraph(text=text, relevance="")
    return paragraph.title, paragraph.body


def passage_id(text: str) -> str:
    """Title plus a content hash, so the same passage gets one id across examples (deduplicated in a
    batch) and callers can name their negatives with the ids positives get."""
    title = _split_passage(text)[0]
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
    return f"{title}@{digest}" if title else digest


def passage_document(text: str, doc_id: str | None = None) -> Document:
    """A passage as a document-granularity ``Document`` (id :func:`passage_id` unless given); positives
    and negatives go through this one function so no formatting difference tells them apart."""
    title, body = _split_passage(text)
    esc = escape_data_text  # OneGen's tokens and the tokenizers' control tokens
    return Document(id=doc_id or passage_id(text), units=(esc(body),), title=esc(title), granularity="document")


def _negatives_for(source: NegativeSource | None, k: int, paragraph: SelfRagParagraph) -> Sequence[str]:
    if source is None:
        return ()
    if callable(source):
        return source(k, paragraph)
    return source.get(k, ())


class _Builder:
    """Accumulates segments, merging neighbours with the same role so each is tokenised once."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def text(self, text: str, generated: bool) -> None:
        if not text:
            return
        last = self.segments[-1] if self.segments else None
        if isinstance(last, Text) and last.generated == generated:
            self.segments[-1] = Text(last.text + text, generated)
        else:
            self.segments.append(Text(text, generated))

    def retrieval(self, query_id: str) -> None:
        self.segments.append(Retrieval(query_id))


def _main_sequence(example: SelfRagExample) -> tuple[list[Segment], list[SelfRagParagraph]]:
    """Segments of the main sequence and the passages in retrieval order (query k ↔ passage k)."""
    out = _Builder()
    out.text(selfrag_prompt(example), generated=False)
    paragraphs: list[SelfRagParagraph] = []
    for seg in example.segments:
        if isinstance(seg, SelfRagText):
            out.text(seg.text, generated=True)
        elif isinstance(seg, SelfRagToken):
            out.text(seg.token, generated=True)
        elif isinstance(seg, SelfRagParagraph):
            out.retrieval(f"r{len(paragraphs)}")
            out.text(f"{PARAGRAPH_OPEN}{seg.text}{PARAGRAPH_CLOSE}", generated=False)
            out.text(seg.relevance, generated=True)
            paragraphs.append(seg)
        else:  # pragma: no cover - guarded by the parser
            raise TypeError(f"example {example.id!r}: unknown segment {seg!r}")
    return out.segments, paragraphs


def _hard_negatives(
    example_id: str,
    k: int,
    candidate_ids: Sequence[str],
    passages: Mapping[str, str] | None,
    positives: set[str],
    docs: dict[str, Document],
) -> tuple[str, ...]:
    """Retrieval k's negatives, their documents added to ``docs``. A candidate whose id or text is a
    positive of this example is dropped: it answers this or a neighbouring query, so it is not wrong."""
    kept: list[str] = []
    for neg_id in dict.fromkeys(candidate_ids):
        if neg_id in positives:
            continue
        if passages is None or neg_id not in passages:
            raise ValueError(f"example {example_id!r}: retrieval {k} negative {neg_id!r} has no text in 'passages'")
        if passage_id(passages[neg_id]) in positives:
            continue
        docs.setdefault(neg_id, passage_document(passages[neg_id], doc_id=neg_id))
        kept.append(neg_id)
    return tuple(kept)


def reconstruct_selfrag(
    example: SelfRagExample,
    negatives: NegativeSource | None = None,
    passages: Mapping[str, str] | None = None,
) -> TrainingExample:
    """Build the OneGen example of one Self-RAG record.

    ``negatives`` gives hard-negative doc ids per retrieval (see :data:`NegativeSource`); ``passages``
    maps each such id to its passage text (``"{title}\\n{text}"`` like the positives). Use
    :func:`passage_id` for ids when possible so a passage gets one id everywhere. ``[Irrelevant]``
    retrievals get ``Query(id, (), ())``: no positive, and no negatives are asked for.
    """
    segments, paragraphs = _main_sequence(example)
    docs: dict[str, Document] = {}
    positive_of: list[str | None] = []
    for paragraph in paragraphs:
        doc = passage_document(paragraph.text) if paragraph.is_relevant else None
        if doc is not None:
            docs.setdefault(doc.id, doc)
        positive_of.append(doc.id if doc is not None else None)
    positives = {p for p in positive_of if p is not None}

    queries: list[Query] = []
    for k, (paragraph, positive) in enumerate(zip(paragraphs, positive_of)):
        if positive is None:
            queries.append(Query(f"r{k}", (), ()))
            continue
        candidates = _negatives_for(negatives, k, paragraph)
        kept = _hard_negatives(example.id, k, candidates, passages, positives, docs)
        queries.append(Query(f"r{k}", (positive,), kept))
    return TrainingExample(
        id=example.id,
        task="selfrag",
        segments=tuple(segments),
        queries=tuple(queries),
        documents=tuple(docs.values()),
        meta={"source": "selfrag", "dataset_name": example.dataset_name, "utility": example.utility},
    )


def corpus_passages(records: Iterable[SelfRagExample]) -> list[str]:
    """Every passage text of the records once, in first-seen order: the corpus hard negatives come from."""
    return list(dict.fromkeys(par.text for r in records for par in r.paragraphs()))


def distinct_ids(examples: Iterable[TrainingExample]) -> list[TrainingExample]:
    """The examples with repeated ids told apart: the published Self-RAG file merges sources whose ids
    repeat, so the second and later examples of an id become `{id}~2`, `{id}~3`, … and all of them train."""
    seen: Counter = Counter()
    out = []
    for ex in examples:
        seen[ex.id] += 1
        out.append(ex if seen[ex.id] == 1 else replace(ex, id=f"{ex.id}~{seen[ex.id]}"))
    return out


def reconstruct_with_negatives(records: Iterable[SelfRagExample], passages: Sequence[str],
                               negatives_of: Mapping[str, Sequence[str]], skips: Skips) -> list[TrainingExample]:
    """Each record's example, the hard negatives of each passage those `negatives_of` gives for its text
    (ids by :func:`passage_id` over `passages`), repeated ids told apart (:func:`distinct_ids`). A record
    that cannot become an example is skipped, counted in `skips` under task 'selfrag'."""
    texts = {passage_id(t): t for t in passages}
    out = []
    for r in records:
        negs = {k: [passage_id(t) for t in negatives_of.get(par.text, [])] for k, par in enumerate(r.paragraphs())}
        try:
            out.append(reconstruct_selfrag(r, negs, texts))
        except ValueError as e:
            skips.add("selfrag", f"record {r.id!r}", str(e))
    return distinct_ids(out)
