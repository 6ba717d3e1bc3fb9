"""End-to-end multi-hop QA evaluation (R→G): the model reads the question, emits [RQ] whenever it wants
a passage, the index answers with the [RQ] hidden state (or a baseline retriever's vector), the passage
is pasted and generation continues until `</FINAL-ANSWER>`.

Scores (App. G.2): answer EM/F1 with the official normalisation, and retrieval Recall@1 —
- per sub-query: a retrieval is a hit when its top-1 unit lies in a gold supporting paragraph not hit
  by an earlier retrieval of the same question. The denominator is, per question, the larger of the
  retrievals emitted and the gold hops, so a question that retrieves too few times loses the hops it
  skipped and one that retrieves too often pays for the extra ones;
- per question: every retrieval hit a distinct gold paragraph and every gold paragraph was hit.

Misses are never dropped: a question whose generation never closes the final answer, hits the
retrieval cap or retrieves nothing (empty candidate set) scores EM = F1 = 0 and is counted by reason.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from onegen_core.data.multihop import MultiHopRecord, Paragraph, load_2wiki, load_hotpotqa
from onegen_core.evaluation.metrics import exact_match, f1
from onegen_core.inference.generation import EngineStats, GenerationResult, RetrievalPolicy, generate
from onegen_core.inference.index import VectorIndex
from onegen_core.method.encoding import SegmentTokenizer
from onegen_core.method.prompts import QUESTION_PREFIX, chat_wrapper, question_prompt
from onegen_core.method.tokens import FINAL_CLOSE, FINAL_OPEN, PARAGRAPH_CLOSE, SPECIAL_TOKENS
from onegen_core.prepare.data_text import escape_control_tokens
from onegen_core.prepare.multihop import paragraph_document, paragraph_id, positive_units

Setting = Literal["distractor", "open"]
# (row in the batch, row's token ids up to and including [RQ]) -> query vector (baseline retrievers)
QueryEncoder = Callable[[int, list[int]], np.ndarray]


def final_answer(text: str) -> str | None:
    """The text inside the last `<FINAL-ANSWER>`; None when it never closes."""
    start = text.rfind(FINAL_OPEN)
    if start < 0:
        return None
    end = text.find(FINAL_CLOSE, start)
    return None if end < 0 else text[start + len(FINAL_OPEN):end].strip()


def strip_special(text: str) -> str:
    for t in SPECIAL_TOKENS:
        text = text.replace(t, " ")
    return " ".join(text.split())


def pipeline_query_parts(question: str, continuation: str, style: str = "implicit") -> tuple[str, str]:
    """What a separate retriever is given at a [RQ], as (head, tail): the same information OneGen's [RQ]
    has read. Implicit style: the question, then everything pasted or generated since the prompt
    (passages, sub-answers). Explicit style: no head, the sub-question written since the last pasted
    passage (the question when none was written). A retriever that must truncate keeps the head and the
    *end* of the tail — the most recent text, nearest the [RQ] (`MiniLMEncoder.fit`)."""
    if style == "explicit":
        tail = continuation.rsplit(PARAGRAPH_CLOSE, 1)[-1]
        return "", strip_special(tail) or question.strip()
    return question.strip(), strip_special(continuation)


def pipeline_query_text(question: str, continuation: str, style: str = "implicit") -> str:
    """`pipeline_query_parts` as one string (what BM25 is given)."""
    return " ".join(part for part in pipeline_query_parts(question, continuation, style) if part)


def query_parts_of(tokenizer, seq: Sequence[int], style: str = "implicit") -> tuple[str, str]:
    """`pipeline_query_parts` of a row's token ids (prompt + continuation up to its [RQ]): the question is
    read off the prompt's question line, the continuation is what follows the prompt (after the chat
    template's assistant header when the tokenizer has one)."""
    decoded = tokenizer.decode(list(seq), skip_special_tokens=False)
    question, _, continuation = decoded.split(QUESTION_PREFIX, 1)[-1].partition("\n")
    chat = chat_wrapper(tokenizer)
    if chat and continuation.startswith(chat[1]):
        continuation = continuation[len(chat[1]):]
    return pipeline_query_parts(question, continuation, style)


def query_text_of(tokenizer, seq: Sequence[int], style: str = "implicit") -> str:
    """`query_parts_of` as one string."""
    return " ".join(part for part in query_parts_of(tokenizer, seq, style) if part)


@dataclass
class MultihopGold:
    docs: frozenset[str]  # ids of the gold supporting paragraphs (as the index stores them)
    units: frozenset[str]  # ids of the supporting sentences
    candidates: frozenset[str]  # the question's own paragraphs (distractor setting)


def gold_of(record: MultiHopRecord) -> MultihopGold:
    """Gold paragraphs and gold units, with the positives training used (App. G.1): every sentence of a
    gold paragraph at or after its first supporting sentence."""
    by_title: dict[str, Paragraph] = {}
    for p in record.context:
        by_title.setdefault(p.title, p)  # the first paragraph of a title, as `MultiHopRecord.paragraph`
    docs, units = set(), set()
    for title in record.supporting_titles():
        p = by_title.get(title)
        if p is None or not p.sentences:
            continue
        supporting = tuple(f.sentence for f in record.supporting_facts if f.title == title)
        doc = paragraph_document(p, "sentence")
        docs.add(doc.id)
        units.update(positive_units(doc, supporting))
    return MultihopGold(frozenset(docs), frozenset(units),
                        frozenset(paragraph_id(p) for p in record.context if p.sentences))


def questions_missing_from_index(records: Sequence[MultiHopRecord], index_docs: set[str]) -> list[str]:
    """Ids of the questions with a paragraph of their own that the index lacks: in the distractor setting
    their retrievals may find nothing and count as misses."""
    return [r.id for r in records if not gold_of(r).candidates <= index_docs]


def held_out_questions(path: str, dataset: str, limit: int = 0) -> list[MultiHopRecord]:
    """The first `limit` (0 = all) questions of a prepared held-out file. Prepared files are each
    dataset's official JSON form: `dataset` "2wiki" has `evidences` and no `level`, anything else is
    read as HotpotQA."""
    records = (load_2wiki if dataset == "2wiki" else load_hotpotqa)(path)
    return records[:limit] if limit else records


def score_example(record: MultiHopRecord, result: GenerationResult, unit_doc: Callable[[str], str | None]) -> dict:
    """One prediction row: answer, EM/F1, retrieval hits and the miss reason (None if not a miss)."""
    gold = gold_of(record)
    answer = final_answer(result.text)
    hits_seen: set[str] = set()
    rows = []
    nothing = False
    for ev in result.retrievals:
        if not ev.ids:
            nothing = True
            rows.append({"top": None, "doc": None, "score": None, "gold_doc": False, "supporting_unit": False})
            continue
        doc = unit_doc(ev.ids[0])
        new_gold = doc in gold.docs and doc not in hits_seen
        if new_gold:
            hits_seen.add(doc)
        rows.append({"top": ev.ids[0], "doc": doc, "score": round(ev.scores[0], 5), "gold_doc": bool(new_gold),
                     "supporting_unit": ev.ids[0] in gold.units})
    if result.finish_reason == "retrieval_cap":
        reason = "retrieval_cap"
    elif nothing:
        reason = "nothing_retrievable"
    elif answer is None:
        reason = "never_closed" if result.finish_reason == "length" else "no_final_answer"
    else:
        reason = None
    n_gold, n_emitted = len(gold.docs), len(rows)
    hits = sum(r["gold_doc"] for r in rows)
    em = f = 0.0
    if reason is None:
        em, f = exact_match(answer, record.answer), f1(answer, record.answer)
    return {
        "id": record.id,
        "question": record.question,
        "gold_answer": record.answer,
        "prediction": answer,
        "em": em,
        "f1": f,
        "miss_reason": reason,
        "finish_reason": result.finish_reason,
        "retrievals": rows,
        "gold_hops": n_gold,
        "subquery_hits": hits,
        "subquery_slots": max(n_emitted, n_gold),
        "unit_hits": sum(r["supporting_unit"] for r in rows),
        "question_retrieved": bool(n_gold and hits == n_gold == n_emitted),
        "generation": result.text,
    }


def recall_by_hop(rows: Sequence[dict]) -> dict[str, float]:
    """Recall@1 of the k-th retrieval, k = 1, 2, …: over the questions with at least k gold paragraphs, the
    share whose k-th retrieval hit a gold paragraph not hit before (a question that stopped retrieving
    earlier misses hop k). Shows where a retriever loses: a first hop reads only the question, later
    ones read pasted passages too."""
    most = max((r["gold_hops"] for r in rows), default=0)
    out = {}
    for k in range(1, most + 1):
        eligible = [r for r in rows if r["gold_hops"] >= k]
        hits = sum(len(r["retrievals"]) >= k and bool(r["retrievals"][k - 1]["gold_doc"]) for r in eligible)
        out[str(k)] = hits / len(eligible)
    return out


def aggregate(rows: Sequence[dict]) -> dict:
    n = len(rows)
    slots = sum(r["subquery_slots"] for r in rows)
    misses = Counter(r["miss_reason"] for r in rows if r["miss_reason"])
    return {
        "questions": n,
        "em": sum(r["em"] for r in rows) / n if n else 0.0,
        "f1": sum(r["f1"] for r in rows) / n if n else 0.0,
        "recall_at_1_subquery": sum(r["subquery_hits"] for r in rows) / slots if slots else 0.0,
        "recall_at_1_question": sum(r["question_retrieved"] for r in rows) / n if n else 0.0,
        "unit_recall_at_1": sum(r["unit_hits"] for r in rows) / slots if slots else 0.0,
        "recall_at_1_by_hop": recall_by_hop(rows),
        "retrievals_per_question": sum(len(r["retrievals"]) for r in rows) / n if n else 0.0,
        "misses": sum(misses.values()),
        "misses_by_reason": dict(sorted(misses.items())),
    }


def evaluate_multihop(
    model,
    tokenizer,
    records: Sequence[MultiHopRecord],
    index: VectorIndex,
    setting: Setting,
    policy: RetrievalPolicy,
    unit_doc: Callable[[str], str | None],
    batch_size: int = 8,
    checkpoint_id: str | None = None,
    query_encoder: QueryEncoder | None = None,
    on_batch: Callable[[int], None] | None = None,
    stats: EngineStats | None = None,
    compact: bool = True,
) -> tuple[list[dict], dict]:
    """Generate with retrieval for every record; returns (prediction rows, aggregate metrics).

    setting: "distractor" restricts each question's retrievals to its own paragraphs; "open" searches
    the whole index. unit_doc maps a retrieved unit id to its document id (the index's doc_id).
    compact: `generate`'s (False only to measure the engine without it)."""
    if setting not in ("distractor", "open"):
        raise ValueError(f"setting must be 'distractor' or 'open', got {setting!r}")
    if policy.mode != "rag":
        raise ValueError("multi-hop evaluation generates in 'rag' mode")
    tok = SegmentTokenizer(tokenizer)
    rows: list[dict] = []
    for i in range(0, len(records), batch_size):
        batch = list(records[i:i + batch_size])
        # data text, escaped as training escaped it (the prompt escapes OneGen's tokens; control tokens here)
        prompts = [tok.prompt(question_prompt(escape_control_tokens(r.question))) for r in batch]
        allowed = [gold_of(r).candidates for r in batch] if setting == "distractor" else None
        results = generate(model, tokenizer, prompts, index, policy, checkpoint_id=checkpoint_id,
                           allowed=allowed, query_encoder=query_encoder, stats=stats, compact=compact)
        rows += [score_example(r, res, unit_doc) for r, res in zip(batch, results)]
        if on_batch:
            on_batch(len(batch))
    return rows, aggregate(rows)


def records_by_id(records: Iterable[MultiHopRecord]) -> dict[str, MultiHopRecord]:
    return {r.id: r for r in records}
