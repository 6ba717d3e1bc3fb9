"""Retrieval quality on the held-out HotpotQA questions: OneGen's [RQ] vs BM25 vs a MiniLM retriever.

Every [RQ] of the held-out questions (the decomposition the training used: one hop per supporting
paragraph) searches its own question's sentence units (the distractor setting: 10 paragraphs, ~40
sentences). OneGen's query is the teacher-forced [RQ] hidden state (the question plus the passages of
earlier hops in context); BM25 and MiniLM get the question text. Recall@1 = the top unit is a supporting
sentence of that hop; doc Recall@1 = the top unit lies in that hop's gold paragraph.
Writes metrics/retrieval_quality.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from onegen_core.config import load_params, parse_overrides
from onegen_core.data import load_hotpotqa
from onegen_core.evaluation.retrieval import retrieval_recall
from onegen_core.inference.document_encoding import unit_records
from onegen_core.method.backbone import load_pretrained
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.prepare.multihop import hops_from_supporting_facts, reconstruct_multihop
from tasks.adapters.baselines import BM25Index, MiniLMEncoder

ROOT = Path(__file__).resolve().parents[1]


def baseline_recall(search, queries: list[tuple[str, set[str], set[str], set[str]]]) -> dict[str, float]:
    """queries: (text, positives, positive docs, allowed units) → Recall@1 and doc Recall@1."""
    hits = search([q[0] for q in queries], [q[3] for q in queries])
    r1 = np.mean([bool(h) and h[0].id in q[1] for h, q in zip(hits, queries)])
    d1 = np.mean([bool(h) and h[0].doc_id in q[2] for h, q in zip(hits, queries)])
    return {"recall_at_1": float(r1), "doc_recall_at_1": float(d1), "queries": float(len(queries))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="trained checkpoint (default: train.output_dir)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default="metrics/retrieval_quality.json")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="params override, e.g. -S profile=cpu-smollm2-135m (the held-out split comes from params)")
    args = ap.parse_args(argv)
    p = load_params(args.params, parse_overrides(args.set))
    ckpt = args.checkpoint or p.train.output_dir
    # the held-out questions of the prepare stage's split (never trained on)
    held = load_hotpotqa(p.prepare.hotpotqa_dev)[p.prepare.dev_train_count:]
    cfg = dataclasses.replace(p.reconstruct, max_negative_paragraphs=10_000)
    examples = [reconstruct_multihop(r, hops_from_supporting_facts(r), cfg, p.train.seed) for r in held]

    lm, tok, _ = load_pretrained(ckpt)
    collator = OneGenCollator(tok, p.train.max_length, max_doc_length=1024, share_negatives=False)
    onegen = retrieval_recall(OneGenModel(lm, p.loss), collator, examples)

    records = {r.id: r for ex in examples for d in ex.documents for r in unit_records(d)}
    queries = []
    for rec, ex in zip(held, examples):
        units = {u for d in ex.documents for u in d.unit_ids()}
        for q in ex.queries:
            pos_docs = {records[u].doc_id for u in q.positives}
            queries.append((rec.question, set(q.positives), pos_docs, units))
    recs = list(records.values())
    minilm = MiniLMEncoder()
    mini_index = minilm.index(recs)
    mini = baseline_recall(lambda texts, allowed: mini_index.search(minilm.encode(texts), 1, allowed), queries)
    bm25_index = BM25Index(recs)
    bm25 = baseline_recall(lambda texts, allowed: bm25_index.search(texts, 1, allowed), queries)
    out = {
        "checkpoint": ckpt,
        "held_out_questions": len(held),
        "onegen": {k: onegen[k] for k in ("recall_at_1", "doc_recall_at_1", "queries",
                                          "recall_at_1_first_rq", "recall_at_1_later_rq")},
        "bm25": bm25,
        "minilm_pipeline": mini,
        "random_recall_at_1": float(np.mean([len(q[1]) / len(q[3]) for q in queries])),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    for name in ("onegen", "bm25", "minilm_pipeline"):
        print(f"{name:>16}: Recall@1 {out[name]['recall_at_1']:.3f}  doc Recall@1 {out[name]['doc_recall_at_1']:.3f}")
    print(f"{'random':>16}: Recall@1 {out['random_recall_at_1']:.3f}   ({int(onegen['queries'])} queries)")


if __name__ == "__main__":
    main()
