"""Multi-hop retrieval on the validation questions in the held-out format, OneGen beside the baselines.

`evaluate` scores held-out questions; settings must be chosen without them. This bench scores the label
stage's multi-hop validation questions the way `evaluate` scores a retrieval — the top-1 unit lies in a
gold paragraph not pasted before — with every paragraph of the question as a candidate (`distractor`) or
every paragraph of every validation question (`open`, ~400 paragraphs), teacher-forced: before each
[RQ] stands the gold history. MiniLM and BM25 rank the same units with the text OneGen's [RQ] has read
(the question plus what was pasted), as the pipeline baselines of `evaluate` do. So a recipe can be
judged on "OneGen ≥ the separate retrievers" before any held-out figure exists.

    python -m bench.val_multihop --checkpoint default=models/core [--checkpoint other=DIR]

Writes metrics/val_multihop.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from onegen_core.config import BackboneConfig, load_params, parse_overrides
from onegen_core.data import load_hotpotqa
from onegen_core.evaluation.retrieval import HopQuery, hop_queries, hop_recall, onegen_hop_scores, with_context
from onegen_core.inference.document_encoding import unit_records
from onegen_core.method.backbone import load_pretrained
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.precision import resolve_inference_dtype
from onegen_core.method.prompts import QUESTION_PREFIX
from onegen_core.method.segments import Text
from onegen_core.prepare.multihop import escape_record, paragraph_document
from onegen_core.training.dataset import load_examples

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("distractor", "open")


def validation_multihop(p) -> list:
    """The multi-hop validation examples with every paragraph of their question as a document."""
    val = load_examples(p.train_data.val_file, ["multihop"])
    records = {r.id: escape_record(r) for r in load_hotpotqa(Path(p.prepare.out_dir) / "multihop_train.jsonl")}
    missing = [e.id for e in val if e.id not in records]
    if missing:
        raise SystemExit(f"{len(missing)} validation examples have no prepared record (first {missing[0]!r}): "
                         "re-run `dvc repro label`")
    g = p.reconstruct.granularity
    return [with_context(e, [paragraph_document(q, g) for q in records[e.id].context if q.sentences]) for e in val]


def question_of(example) -> str:
    """The question an example's prompt asks (its first text segment, as `hop_queries` reads it)."""
    first = next((s for s in example.segments if isinstance(s, Text)), None)
    return first.text.removeprefix(QUESTION_PREFIX).strip() if first is not None else ""


def query_parts(query: HopQuery, question: str) -> tuple[str, str]:
    """(head, tail) of a hop's query text for a truncating retriever: the question, when the text starts
    with it (implicit style), and the rest (`pipeline_query_parts`)."""
    if question and query.text.startswith(question):
        return question, query.text[len(question):]
    return "", query.text


def baseline_scores(queries: list[HopQuery], records: list, unit_text: str = "rd_context",
                    questions: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """(n_queries, n_units) scores of MiniLM (cosine of mean-pooled vectors) and BM25 over `records`, each
    unit given as `unit_text` (`baseline_unit_parts`), as the evaluate stage gives them; `questions`
    (example id → question) tells MiniLM which start of a long query to keep."""
    questions = questions or {}
    from tasks.adapters.baselines import BM25Index, MiniLMEncoder, baseline_unit_parts

    texts = [q.text for q in queries]
    enc = MiniLMEncoder()
    u = enc.encode_parts(baseline_unit_parts(records, unit_text))  # (n_units, 384)
    # MiniLM keeps the question and the most recent text of a long query, as in evaluate
    out = {"minilm": enc.encode_parts([query_parts(q, questions.get(q.example_id, "")) for q in queries]) @ u.T}
    bm25 = BM25Index(records, unit_text)
    rows = []
    for hits in bm25.search(texts, k=len(records)):
        s = np.full(len(records), -np.inf)
        col = {r.id: j for j, r in enumerate(records)}
        for h in hits:
            s[col[h.id]] = h.score
        rows.append(s)
    out["bm25"] = np.stack(rows)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                    help="a trained checkpoint directory, named (repeat to compare; none: baselines only)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default="metrics/val_multihop.json")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    args = ap.parse_args(argv)
    p = load_params(args.params, parse_overrides(args.set))
    named = []
    for spec in args.checkpoint:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_dir():
            raise SystemExit(f"--checkpoint {spec!r}: give NAME=PATH with an existing checkpoint directory")
        named.append((name, path))

    examples = validation_multihop(p)
    queries = [q for ex in examples for q in hop_queries(ex, p.reconstruct.query_style)]
    docs = {d.id: d for ex in examples for d in ex.documents}
    records = [r for d in docs.values() for r in unit_records(d)]
    out: dict = {"val_file": p.train_data.val_file, "questions": len(examples), "queries": len(queries),
                 "paragraphs": len(docs), "units": len(records), "systems": {}}

    def report(name: str, scores: np.ndarray, unit_docs: list[str], seconds: float) -> None:
        res = {s: hop_recall(queries, scores, unit_docs, s) for s in SETTINGS}
        out["systems"][name] = {**res, "seconds": round(seconds, 1)}
        for s, r in res.items():
            print(f"{name:>12} {s:>10}: R@1 {r['recall_at_1']:.3f} (first [RQ] {r['recall_at_1_first_rq']:.3f}, "
                  f"later {r['recall_at_1_later_rq']:.3f}) over {int(r['queries'])} [RQ]", flush=True)

    for name, path in named:
        t0 = time.perf_counter()
        dtype = resolve_inference_dtype(p.backbone.inference_dtype)
        lm, tok, _ = load_pretrained(path, BackboneConfig(name=path, dtype=dtype))
        collator = OneGenCollator(tok, p.train.max_length, p.encode.max_doc_length, share_negatives=False)
        scores, ids, unit_docs = onegen_hop_scores(OneGenModel(lm, p.loss), collator, examples, p.train.batch_size)
        # a unit whose [RD] fell past encode.max_doc_length has no vector, as in the encoded index
        col = {u: j for j, u in enumerate(ids)}
        full = np.full((len(queries), len(records)), -np.inf)  # (n_queries, n_units) in `records` order
        kept = [j for j, r in enumerate(records) if r.id in col]
        full[:, kept] = scores[:, [col[records[j].id] for j in kept]]
        report(name, full, [r.doc_id for r in records], time.perf_counter() - t0)
        out["systems"][name]["units_truncated"] = len(records) - len(kept)
        out["systems"][name]["path"] = os.path.relpath(Path(path).resolve(), ROOT)
    t0 = time.perf_counter()
    questions = {ex.id: question_of(ex) for ex in examples}
    for name, scores in baseline_scores(queries, records, p.evaluate.baseline_unit_text, questions).items():
        report(name, scores, [r.doc_id for r in records], time.perf_counter() - t0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
