"""Multi-hop QA (HotpotQA, 2WikiMultihopQA) in OneGen's R→G format.

Main sequence (implicit query style, the default):
    The question is: {question}\n            CTX
    [RQ]                                      emitted by the model; RET position
    <paragraph>{title}: {passage}</paragraph> pasted by the engine (CTX); `</paragraph>` is GEN
    {sub-answer}\n                            generated (when the decomposition has one)
    … one block per hop …
    <FINAL-ANSWER>{answer}</FINAL-ANSWER><eos> generated
Explicit style writes the sub-question before [RQ] (optionally inside <LOC>…</LOC>).

Documents: the question's context paragraphs, one [RD] per sentence (or per paragraph). For hop k,
positives are hop k's supporting sentences; negatives are every other unit except the gold units of
later hops, which are right answers to a later query and would be false negatives here (in comparison
questions the hop order is arbitrary).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from onegen_core.config import ReconstructConfig
from onegen_core.data.multihop import MultiHopRecord, Paragraph
from onegen_core.method.prompts import paste_paragraph, question_prompt
from onegen_core.method.segments import Document, Query, Retrieval, Segment, Text, TrainingExample, sentence_unit_id
from onegen_core.method.tokens import FINAL_CLOSE, FINAL_OPEN, LOC_CLOSE, LOC_OPEN


@dataclass(frozen=True)
class Hop:
    """One retrieval step of a decomposition."""

    title: str  # the gold paragraph this hop retrieves
    positive_sentences: tuple[int, ...]  # its supporting sentences
    sub_question: str | None = None  # explicit style only
    sub_answer: str | None = None


def hops_from_supporting_facts(record: MultiHopRecord) -> list[Hop]:
    """The deterministic decomposition (no LLM): one hop per supporting paragraph, in the order the
    supporting facts name them, no sub-questions or sub-answers (implicit style)."""
    hops = []
    for title in record.supporting_titles():
        sents = tuple(sorted({f.sentence for f in record.supporting_facts if f.title == title}))
        hops.append(Hop(title=title, positive_sentences=sents))
    return hops


def paragraph_id(p: Paragraph) -> str:
    """Title plus a content hash: the same passage in two questions gets one id (deduplicated in a
    batch), a different passage under the same title gets another."""
    digest = hashlib.sha1("\x1f".join(p.sentences).encode()).hexdigest()[:10]
    return f"{p.title}@{digest}"


def paragraph_document(p: Paragraph, granularity: str) -> Document:
    units = tuple(s for s in p.sentences) if granularity == "sentence" else (p.text(),)
    return Document(id=paragraph_id(p), units=units, title=p.title, granularity=granularity)


def pasted_paragraph(p: Paragraph) -> str:
    return paste_paragraph(p.title, p.text())


def _units_of(doc: Document, sentences: tuple[int, ...]) -> list[str]:
    if doc.granularity == "document":
        return [doc.id]
    return [sentence_unit_id(doc.id, j) for j in sentences if j < len(doc.units)]


def reconstruct_multihop(
    record: MultiHopRecord,
    hops: list[Hop],
    cfg: ReconstructConfig,
    seed: int = 0,
) -> TrainingExample:
    if not hops:
        raise ValueError(f"record {record.id!r}: a multi-hop example needs at least one hop")
    usable = [p for p in record.context if p.sentences]
    gold_titles = [h.title for h in hops]
    gold = {t: record.paragraph(t) for t in gold_titles}
    distractors = [p for p in usable if p.title not in gold]
    random.Random(f"{seed}:{record.id}").shuffle(distractors)
    paragraphs = list(gold.values()) + distractors[: cfg.max_negative_paragraphs]
    docs = {p.title: paragraph_document(p, cfg.granularity) for p in paragraphs}
    all_units = [u for d in docs.values() for u in d.unit_ids()]

    segments: list[Segment] = [Text(question_prompt(record.question), generated=False)]
    queries: list[Query] = []
    for k, hop in enumerate(hops):
        if cfg.query_style == "explicit":
            if not hop.sub_question:
                raise ValueError(f"record {record.id!r}: hop {k} has no sub-question (explicit query style)")
            sq = f"{LOC_OPEN}{hop.sub_question}{LOC_CLOSE}" if cfg.use_loc else hop.sub_question
            segments.append(Text(sq, generated=True))
        qid = f"hop{k}"
        segments.append(Retrieval(qid))
        segments.append(Text(pasted_paragraph(gold[hop.title]), generated=False))
        if hop.sub_answer:
            segments.append(Text(f"{hop.sub_answer}\n", generated=True))
        positives = _units_of(docs[hop.title], hop.positive_sentences)
        if not positives:
            raise ValueError(f"record {record.id!r}: hop {k} ({hop.title!r}) has no positive sentence")
        later_gold = {u for h in hops[k + 1:] for u in _units_of(docs[h.title], h.positive_sentences)}
        negatives = [u for u in all_units if u not in positives and u not in later_gold]
        queries.append(Query(qid, tuple(positives), tuple(negatives)))
    segments.append(Text(f"{FINAL_OPEN}{record.answer}{FINAL_CLOSE}", generated=True))
    return TrainingExample(
        id=record.id,
        task="multihop",
        segments=tuple(segments),
        queries=tuple(queries),
        documents=tuple(docs.values()),
        meta={"source": record.source, "type": record.type, "hops": gold_titles},
    )
