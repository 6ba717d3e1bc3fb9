"""Multi-hop QA (HotpotQA, 2WikiMultihopQA) in OneGen's R→G format.

Main sequence (implicit query style, the default):
    The question is: {question}\n            CTX
    [RQ]                                      emitted by the model; RET position
    <paragraph>{title}: {passage}</paragraph> pasted by the engine (CTX); `</paragraph>` is GEN
    {sub-answer}\n                            generated (when the decomposition has one)
    … one block per hop …
    <FINAL-ANSWER>{answer}</FINAL-ANSWER><eos> generated
Explicit style writes the sub-question before [RQ] (optionally inside <LOC>…</LOC>).

Documents: the question's context paragraphs, one [RD] per sentence (or per paragraph). For hop k, the
positives are every [RD] of hop k's gold paragraph at or after its first supporting sentence (App. G.1):
attention is causal, so each of those [RD]s has read the supporting sentence, while the [RD]s before it
have not. Negatives are every other unit except the positives of later hops, which are right answers to
a later query and would be false negatives here (in comparison questions the hop order is arbitrary);
the [RD]s of a gold paragraph before its supporting sentence are the hardest negatives. With
`reconstruct.pasted_negatives: false`, the paragraphs pasted before a hop's [RQ] are not its negatives
either: inference never retrieves a pasted passage again, so ranking below it is nothing to learn.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace

from onegen_core.config import ReconstructConfig
from onegen_core.data.multihop import MultiHopRecord, Paragraph, SupportingFact
from onegen_core.method.prompts import paste_paragraph, question_prompt
from onegen_core.method.segments import (
    Document,
    Query,
    Retrieval,
    Segment,
    Text,
    TrainingExample,
    sentence_unit_id,
)
from onegen_core.method.tokens import FINAL_CLOSE, FINAL_OPEN, LOC_CLOSE, LOC_OPEN
from onegen_core.prepare.data_text import escape_data_text


@dataclass(frozen=True)
class Hop:
    """One retrieval step of a decomposition."""

    title: str  # the gold paragraph this hop retrieves
    supporting_sentences: tuple[int, ...]  # its supporting sentences (the positives start at the first)
    sub_question: str | None = None  # explicit style only
    sub_answer: str | None = None


def escape_record(record: MultiHopRecord) -> MultiHopRecord:
    """The record with every text field escaped (`escape_special_tokens`): question, answer, titles (in
    the context and the supporting facts alike), sentences, evidences. The label stage escapes each
    record before reconstruction, which rejects a special token it finds in data text."""
    esc = escape_data_text  # OneGen's tokens and the tokenizers' control tokens
    return replace(
        record,
        question=esc(record.question),
        answer=esc(record.answer),
        supporting_facts=tuple(SupportingFact(esc(f.title), f.sentence) for f in record.supporting_facts),
        context=tuple(Paragraph(esc(p.title), tuple(esc(s) for s in p.sentences)) for p in record.context),
        evidences=tuple(tuple(esc(x) for x in e) for e in record.evidences),
    )


def escape_hop(hop: Hop) -> Hop:
    """A hop of a decomposition with its title and texts escaped like `escape_record`'s (an LLM's
    sub-question is data text too)."""
    esc = escape_data_text  # OneGen's tokens and the tokenizers' control tokens
    return replace(hop, title=esc(hop.title),
                   sub_question=None if hop.sub_question is None else esc(hop.sub_question),
                   sub_answer=None if hop.sub_answer is None else esc(hop.sub_answer))


def hops_from_supporting_facts(record: MultiHopRecord) -> list[Hop]:
    """The deterministic decomposition (no LLM): one hop per supporting paragraph, in the order the
    supporting facts name them, no sub-questions or sub-answers (implicit style)."""
    hops = []
    for title in record.supporting_titles():
        sents = tuple(sorted({f.sentence for f in record.supporting_facts if f.title == title}))
        hops.append(Hop(title=title, supporting_sentences=sents))
    return hops


def paragraph_id(p: Paragraph) -> str:
    """Title plus a content hash: the same passage in two questions gets one id (deduplicated in a
    batch), a different passage under the same title gets another."""
    digest = hashlib.sha1("\x1f".join(p.sentences).encode()).hexdigest()[:10]
    return f"{p.title}@{digest}"


def paragraph_document(p: Paragraph, granularity: str) -> Document:
    """The paragraph as a document; its text is escaped (`escape_special_tokens`: a literal [RD] in a
    sentence must not become one more [RD]), its id is the paragraph's own (`paragraph_id`), so the id
    of a passage is the same whoever builds the document."""
    esc = escape_data_text  # OneGen's tokens and the tokenizers' control tokens
    units = tuple(esc(s) for s in p.sentences) if granularity == "sentence" else (esc(p.text()),)
    return Document(id=paragraph_id(p), units=units, title=esc(p.title), granularity=granularity)


def pasted_paragraph(p: Paragraph) -> str:
    return paste_paragraph(p.title, p.text())


def positive_units(doc: Document, supporting: tuple[int, ...]) -> list[str]:
    """The units of a gold paragraph whose [RD] has read a supporting sentence: every sentence from the
    first supporting one to the end (App. G.1), or the paragraph itself at document granularity."""
    if doc.granularity == "document":
        return [doc.id]
    first = min((j for j in supporting if j < len(doc.units)), default=None)
    return [] if first is None else [sentence_unit_id(doc.id, j) for j in range(first, len(doc.units))]


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
    gold = {}
    for k, t in enumerate(gold_titles):
        try:
            gold[t] = record.paragraph(t)
        except KeyError:
            raise ValueError(f"record {record.id!r}: hop {k} names paragraph {t!r}, not in the context") from None
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
        positives = positive_units(docs[hop.title], hop.supporting_sentences)
        if not positives:
            raise ValueError(f"record {record.id!r}: hop {k} ({hop.title!r}) has no positive sentence")
        later_gold = {u for h in hops[k + 1:] for u in positive_units(docs[h.title], h.supporting_sentences)}
        # a paragraph pasted before this [RQ] is never retrieved again at inference: with
        # pasted_negatives off its units are unlabelled, so the loss is spent on what can be retrieved
        pasted = set() if cfg.pasted_negatives else {u for h in hops[:k] for u in docs[h.title].unit_ids()}
        negatives = [u for u in all_units if u not in positives and u not in later_gold and u not in pasted]
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
