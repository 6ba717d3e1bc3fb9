"""DVC stage `label`: decompositions + records → OneGen training examples with positives/negatives,
written as the documented JSONL training format (`train.jsonl`, `val.jsonl`), plus entity-linking
examples from the training benchmarks against the KB, and a report of counts."""
from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

from onegen_core.config import Params
from onegen_core.data import load_elevant, load_hotpotqa, load_kb
from onegen_core.prepare.decomposition import Decomposition, to_hops
from onegen_core.prepare.labelling import EntityNegatives, cap_multihop_labels, entity_linking_examples
from onegen_core.prepare.multihop import reconstruct_multihop
from tasks.stage_common import stage_params, write_json, write_jsonl

log = logging.getLogger("onegen.label")


def run(p: Params) -> dict:
    cfg = p.label
    prepared, annotated, out = Path(p.prepare.out_dir), Path(p.annotate.out_dir), Path(cfg.out_dir)
    stats: Counter = Counter()
    records = {r.id: r for r in load_hotpotqa(prepared / "multihop_train.jsonl")}
    examples = []
    with open(annotated / "decompositions.jsonl") as fh:
        for n, line in enumerate(fh, 1):
            d = Decomposition.from_dict(json.loads(line), where=f"{annotated / 'decompositions.jsonl'}:{n}")
            rec = records.get(d.example_id)
            if rec is None:
                raise ValueError(f"{annotated / 'decompositions.jsonl'}:{n}: example {d.example_id!r} not in the prepared records")
            try:
                ex = reconstruct_multihop(rec, to_hops(d, rec), p.reconstruct, cfg.seed)
            except ValueError as e:  # e.g. a hop naming a paragraph without supporting sentences
                stats["multihop_skipped"] += 1
                stats[f"multihop_skipped: {str(e).split(': ', 1)[-1][:60]}"] += 1
                continue
            examples.append(cap_multihop_labels(ex, cfg.positives_per_sentence, cfg.negatives_per_positive, cfg.seed))
    stats["multihop_examples"] = len(examples)
    stats["multihop_queries"] = sum(len(e.queries) for e in examples)

    split = json.loads((prepared / "el_split.json").read_text())["benchmarks"]
    kb_list = load_kb(prepared / "kb.jsonl")
    kb = {e.id: e for e in kb_list}
    negatives = EntityNegatives(kb_list, cfg.el_hard_negatives, cfg.el_random_negatives)
    el = []
    for path in p.prepare.elevant:
        articles = load_elevant(path, on_error="skip")  # prepare already reported what it skips
        if articles and articles[0].benchmark in split["train"]:
            for a in articles:
                el += entity_linking_examples(a, kb, negatives, cfg.el_max_chars, cfg.seed, stats)
    stats["el_examples"] = len(el)
    selfrag = selfrag_examples(p, stats)

    everything = examples + el + selfrag
    rng = random.Random(cfg.seed)
    order = list(range(len(everything)))
    rng.shuffle(order)
    n_val = int(round(cfg.val_fraction * len(everything)))
    val_idx = set(order[:n_val])
    write_jsonl(out / "train.jsonl", (everything[i].to_dict() for i in range(len(everything)) if i not in val_idx))
    write_jsonl(out / "val.jsonl", (everything[i].to_dict() for i in sorted(val_idx)))
    report = {"train": len(everything) - n_val, "val": n_val, **dict(sorted(stats.items()))}
    write_json(out / "report.json", report)
    log.info("labelled: %s", report)
    return report


def selfrag_examples(p: Params, stats: Counter) -> list:
    """Self-RAG records of `label.selfrag` as OneGen examples (task 'selfrag'): each relevant passage is
    the positive of the [RQ] before it; its hard negatives are the passages of the same files that
    MiniLM ranks in `label.selfrag_negative_window` (App. F). Malformed records are skipped, counted
    and listed, under `prepare.max_skip_rate`."""
    cfg = p.label
    if not cfg.selfrag:
        return []
    from onegen_core.data import load_selfrag_with_report
    from onegen_core.prepare.labelling import rank_window_negatives
    from onegen_core.prepare.selfrag import passage_id, reconstruct_selfrag

    records = []
    for path in cfg.selfrag:
        recs, errors = load_selfrag_with_report(path)
        n_in = len(recs) + len(errors)
        stats[f"selfrag_skipped: {path}"] += len(errors)
        if n_in and len(errors) / n_in > p.prepare.max_skip_rate:
            raise ValueError(f"{path}: {len(errors)}/{n_in} Self-RAG records skipped (> prepare.max_skip_rate "
                             f"{p.prepare.max_skip_rate:.0%}); first: {errors[0]}")
        for e in errors[:20]:
            log.warning("skipped: %s", e)
        records += recs
    passages = list(dict.fromkeys(par.text for r in records for par in r.paragraphs()))
    negatives_of: dict[str, list[str]] = {}
    if len(passages) > 1:
        from tasks.baselines import MiniLMEncoder

        lo_f, hi_f = cfg.selfrag_negative_window
        n = len(passages) - 1  # ranked without the passage itself
        lo, hi = min(int(lo_f * n), n - 1), max(int(lo_f * n) + 1, min(n, round(hi_f * n)))
        ranked = rank_window_negatives(passages, passages, MiniLMEncoder().encode, (min(lo, n - 1), min(hi, n)))
        negatives_of = {text: [passages[k] for k in ks][: cfg.selfrag_max_negatives] for text, ks in zip(passages, ranked)}
    texts = {passage_id(t): t for t in passages}
    out, seen = [], Counter()
    for r in records:
        pars = r.paragraphs()
        negs = {k: [passage_id(t) for t in negatives_of.get(par.text, [])] for k, par in enumerate(pars)}
        ex = reconstruct_selfrag(r, negs, texts)
        seen[ex.id] += 1
        if seen[ex.id] > 1:  # the published file merges sources whose ids repeat: keep both, apart
            from dataclasses import replace

            ex = replace(ex, id=f"{ex.id}~{seen[ex.id]}")
        out.append(ex)
    stats["selfrag_examples"] = len(out)
    stats["selfrag_queries"] = sum(len(e.queries) for e in out)
    stats["selfrag_queries_without_positive"] = sum(1 for e in out for q in e.queries if not q.positives)
    return out


def main(argv: list[str] | None = None) -> None:
    run(stage_params(__doc__, argv))


if __name__ == "__main__":
    main()
