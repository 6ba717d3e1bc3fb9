"""Teacher-forced retrieval quality of [RQ] vs [RD] vectors: Recall@k over each question's own
candidate units (the distractor setting), and over every unit of the examples given (`open_*`, the
open setting's analogue: other questions' paragraphs and other windows' entities compete too).

This measures the retrieval half of the model on gold-formatted sequences (the [RQ] sees the gold
history); the end-to-end figure, where the model's own generation decides what precedes each [RQ],
belongs to the inference engine's evaluation.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel, gather_positions
from onegen_core.method.prompts import QUESTION_PREFIX
from onegen_core.method.segments import Retrieval, Text, TrainingExample


@dataclass
class _Scored:
    """One validation [RQ]: its task, own-candidate hits, and what the open measure needs."""

    task: str
    hits: dict[int, bool]  # k -> a positive in the top k of its own candidates
    top1: bool  # the top-1 own candidate is a positive
    doc_hit: bool
    first: bool  # the first [RQ] of its sequence
    vector: torch.Tensor  # (dim,) normalised
    positives: set[str]
    excluded: set[str]  # its own example's unlabelled units


@torch.no_grad()
def retrieval_recall(
    model: OneGenModel,
    collator: OneGenCollator,
    examples: Sequence[TrainingExample],
    batch_size: int = 4,
    ks: tuple[int, ...] = (1, 5),
    device: str | torch.device = "cpu",
    by_task: bool = False,
) -> dict[str, float]:
    """Recall@k of units (top-k holds a positive unit) and Recall@1 of documents (the top-1 unit
    lies in a document holding a positive), over every [RQ] that has a positive. Queries without one
    are counted, never dropped silently. Recall@1 is also split into the first [RQ] of a sequence and
    the later ones: a later [RQ] follows pasted passages, which its vector must look past.

    by_task: also `<task>/<figure>` for each task of the examples, from the same forward passes (the
    open measure of a task ranks the units of that task's examples only, as a call on them alone would)."""
    was_training = model.training
    model.eval()
    # the open measure: every distinct unit of the examples (by id: a document two examples share is one
    # candidate), each query ranking all of them except its own example's unlabelled units (e.g. a later
    # hop's gold paragraph), which the own-candidate measure leaves out as well
    pool_vec: dict[str, torch.Tensor] = {}
    pool_doc: dict[str, str] = {}
    pool_tasks: dict[str, set[str]] = {}
    scored: list[_Scored] = []
    skipped: dict[str, int] = {}
    for i in range(0, len(examples), batch_size):
        chunk = list(examples[i:i + batch_size])
        batch = collator(chunk).to(device)
        for ex in chunk:
            for d in ex.documents:
                for u in d.unit_ids():
                    pool_tasks.setdefault(u, set()).add(ex.task)
        if batch.query_index.shape[0] == 0:
            continue
        hidden = model.hidden_states(batch.input_ids, batch.attention_mask)  # (n_main, seq, dim)
        q = F.normalize(gather_positions(hidden, batch.query_index).float(), dim=-1)  # (n_q, dim)
        d = F.normalize(model.vectors_at(batch.doc_input_ids, batch.doc_attention_mask, batch.doc_index).float(), dim=-1)
        scores = (q @ d.T).masked_fill(~batch.own_mask, float("-inf"))  # (n_q, n_u)
        for j, uid in enumerate(batch.unit_ids):
            if uid not in pool_vec:
                pool_vec[uid], pool_doc[uid] = d[j].cpu(), batch.unit_docs[j]
        unlabelled = batch.own_mask & ~batch.positive_mask & ~batch.negative_mask  # (n_q, n_u)
        rows = batch.query_index[:, 0].tolist()
        for r in range(scores.shape[0]):
            task = chunk[rows[r]].task
            pos = batch.positive_mask[r]
            if not pos.any():
                skipped[task] = skipped.get(task, 0) + 1
                continue
            order = scores[r].argsort(descending=True)
            top_doc = batch.unit_docs[int(order[0])]
            pos_idx = pos.nonzero().flatten().tolist()
            scored.append(_Scored(
                task, {k: bool(pos[order[:k]].any()) for k in ks}, bool(pos[order[0]]),
                top_doc in {batch.unit_docs[j] for j in pos_idx}, rows[r] not in rows[:r], q[r].cpu(),
                {batch.unit_ids[j] for j in pos_idx},
                {batch.unit_ids[j] for j in unlabelled[r].nonzero().flatten().tolist()}))
    if was_training:
        model.train()
    out = _summarise(scored, sum(skipped.values()), pool_vec, pool_doc, ks)
    if by_task:
        for task in sorted({e.task for e in examples}):
            units = {u for u, tasks in pool_tasks.items() if task in tasks and u in pool_vec}
            part = _summarise([s for s in scored if s.task == task], skipped.get(task, 0),
                              {u: pool_vec[u] for u in units}, pool_doc, ks)
            out.update({f"{task}/{k}": v for k, v in part.items()})
    return out


def _summarise(scored: list[_Scored], skipped: int, pool_vec: dict[str, torch.Tensor], pool_doc: dict[str, str],
               ks: tuple[int, ...]) -> dict[str, float]:
    n = len(scored)
    out = {f"recall_at_{k}": sum(s.hits[k] for s in scored) / n if n else float("nan") for k in ks}
    out["doc_recall_at_1"] = sum(s.doc_hit for s in scored) / n if n else float("nan")
    for name, first in (("first", True), ("later", False)):
        part = [s for s in scored if s.first == first]
        out[f"recall_at_1_{name}_rq"] = sum(s.top1 for s in part) / len(part) if part else float("nan")
    out["queries"] = float(n)
    out["queries_without_positive"] = float(skipped)
    out.update(_open_recall(pool_vec, pool_doc, [(s.vector, s.positives, s.excluded) for s in scored], ks))
    return out


def _open_recall(pool_vec: dict[str, torch.Tensor], pool_doc: dict[str, str],
                 queries: list[tuple[torch.Tensor, set[str], set[str]]], ks: tuple[int, ...]) -> dict[str, float]:
    """Recall@k and document Recall@1 of each query over the whole pool of units (minus its excluded ids)."""
    if not queries:
        return {**{f"open_recall_at_{k}": float("nan") for k in ks}, "open_doc_recall_at_1": float("nan"),
                "open_candidates": 0.0}
    ids = list(pool_vec)
    col = {u: j for j, u in enumerate(ids)}
    units = torch.stack([pool_vec[u] for u in ids])  # (n_pool, dim), normalised
    qs = torch.stack([q for q, _, _ in queries])  # (n_q, dim)
    scores = qs @ units.T  # (n_q, n_pool)
    hits = {k: 0 for k in ks}
    doc_hits = 0
    for r, (_, positives, excluded) in enumerate(queries):
        drop = [col[u] for u in excluded if u in col]
        if drop:
            scores[r, drop] = float("-inf")
        order = scores[r].argsort(descending=True)[:max(ks)].tolist()
        for k in ks:
            hits[k] += int(any(ids[j] in positives for j in order[:k]))
        doc_hits += int(pool_doc[ids[order[0]]] in {pool_doc[u] for u in positives})
    n = len(queries)
    out = {f"open_recall_at_{k}": hits[k] / n for k in ks}
    out["open_doc_recall_at_1"] = doc_hits / n
    out["open_candidates"] = float(len(ids))
    return out


# --------------------------------------------------------------------------- multi-hop, held-out format

@dataclass(frozen=True)
class HopQuery:
    """One multi-hop [RQ], teacher-forced (the gold history precedes it), scored as `evaluate` scores a
    retrieval: a hit when the top-1 unit lies in a gold paragraph not pasted before (any remaining hop's:
    in comparison questions the hop order is arbitrary)."""

    example_id: str
    hop: int  # 0 = the first [RQ] of the example
    text: str  # what a separate retriever is given here (`pipeline_query_text`: the same information)
    own_docs: frozenset[str]  # the question's paragraphs (the distractor setting's candidates)
    pasted: frozenset[str]  # paragraphs pasted before this [RQ]: never retrieved again
    gold: frozenset[str]  # gold paragraphs not pasted yet


def with_context(example: TrainingExample, documents: Sequence) -> TrainingExample:
    """The example with every paragraph of its question as a document (the held-out distractor setting
    ranks all of them; training keeps `reconstruct.max_negative_paragraphs`). Labels are unchanged:
    `hop_recall` scores by paragraph, as `evaluate` does."""
    by_id = {d.id: d for d in example.documents}
    docs = list(example.documents) + [d for d in documents if d.id not in by_id]
    return replace(example, documents=tuple(docs))


def hop_queries(example: TrainingExample, style: str = "implicit") -> list[HopQuery]:
    """The [RQ]s of a multi-hop example in order, each with the text before it (for the baselines) and
    the gold paragraphs left to find."""
    from onegen_core.evaluation.multihop import pipeline_query_text

    unit_doc = {u: d.id for d in example.documents for u in d.unit_ids()}
    gold_of = {q.id: {unit_doc[u] for u in q.positives if u in unit_doc} for q in example.queries}
    question, texts, out = None, [], []
    pasted: set[str] = set()
    order = [s.query_id for s in example.segments if isinstance(s, Retrieval)]
    for seg in example.segments:
        if isinstance(seg, Text):
            if question is None:
                question = seg.text.removeprefix(QUESTION_PREFIX).strip()
            else:
                texts.append(seg.text)
            continue
        k = order.index(seg.query_id)
        remaining = set().union(*(gold_of[q] for q in order[k:])) - pasted
        out.append(HopQuery(example.id, k, pipeline_query_text(question or "", "".join(texts), style),
                            frozenset(d.id for d in example.documents), frozenset(pasted), frozenset(remaining)))
        pasted |= gold_of[seg.query_id]  # the engine pastes the retrieved paragraph; teacher forcing, the gold one
    return out


def hop_recall(queries: Sequence[HopQuery], scores: np.ndarray, unit_docs: Sequence[str],
               setting: str = "distractor") -> dict[str, float]:
    """Paragraph Recall@1 of `scores` (n_queries, n_units): each query ranks its own paragraphs' units
    (`distractor`) or every unit (`open`), never a pasted paragraph's; overall, first [RQ], later ones."""
    if setting not in ("distractor", "open"):
        raise ValueError(f"setting must be 'distractor' or 'open', got {setting!r}")
    docs = np.asarray(unit_docs)
    hits = {"first": [0, 0], "later": [0, 0]}
    for r, q in enumerate(queries):
        if not q.gold:
            continue
        s = scores[r].astype(np.float64).copy()  # (n_units,)
        drop = np.isin(docs, list(q.pasted))
        if setting == "distractor":
            drop |= ~np.isin(docs, list(q.own_docs))
        s[drop] = -np.inf
        top = int(np.argmax(s))
        part = hits["first" if q.hop == 0 else "later"]
        part[0] += int(np.isfinite(s[top]) and docs[top] in q.gold)
        part[1] += 1
    n = hits["first"][1] + hits["later"][1]
    out = {"recall_at_1": (hits["first"][0] + hits["later"][0]) / n if n else float("nan")}
    for name, (h, m) in hits.items():
        out[f"recall_at_1_{name}_rq"] = h / m if m else float("nan")
    out["queries"] = float(n)
    return out


@torch.no_grad()
def onegen_hop_scores(model: OneGenModel, collator: OneGenCollator, examples: Sequence[TrainingExample],
                      batch_size: int = 4, device: str | torch.device = "cpu") -> tuple[np.ndarray, list[str], list[str]]:
    """Cosine scores of every [RQ] of `examples` (in `hop_queries` order) against every distinct unit of
    their documents: (scores (n_queries, n_units), unit ids, unit docs). A query truncated away is an
    error: the measure would silently lose it."""
    was_training = model.training
    model.eval()
    qs, unit_vec, unit_doc = [], {}, {}
    for i in range(0, len(examples), batch_size):
        chunk = list(examples[i:i + batch_size])
        batch = collator(chunk).to(device)
        expected = sum(1 for ex in chunk for s in ex.segments if isinstance(s, Retrieval))
        if batch.query_index.shape[0] != expected:
            raise ValueError(f"{expected - batch.query_index.shape[0]} [RQ] of examples {[e.id for e in chunk]} "
                             "were truncated (raise train.max_length)")
        hidden = model.hidden_states(batch.input_ids, batch.attention_mask)  # (n_main, seq, dim)
        qs.append(F.normalize(gather_positions(hidden, batch.query_index).float(), dim=-1).cpu())  # (n_q, dim)
        d = F.normalize(model.vectors_at(batch.doc_input_ids, batch.doc_attention_mask, batch.doc_index).float(), dim=-1)
        for j, uid in enumerate(batch.unit_ids):
            unit_vec.setdefault(uid, d[j].cpu())
            unit_doc.setdefault(uid, batch.unit_docs[j])
    if was_training:
        model.train()
    ids = list(unit_vec)
    q = torch.cat(qs)  # (n_queries, dim)
    u = torch.stack([unit_vec[x] for x in ids])  # (n_units, dim)
    return (q @ u.T).numpy(), ids, [unit_doc[x] for x in ids]
