"""DVC stage `label`: decompositions + records → OneGen training examples with positives/negatives,
written as the documented JSONL training format (`train.jsonl`, `val.jsonl`), plus entity-linking
examples from the training benchmarks against the KB, and a report of counts."""
from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

from onegen_core.annotation import Decomposition, to_hops
from onegen_core.config import Params
from onegen_core.data import load_elevant, load_hotpotqa, load_kb
from onegen_core.labelling import EntityNegatives, cap_multihop_labels, entity_linking_examples
from onegen_core.reconstruct import reconstruct_multihop
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

    everything = examples + el
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


def main(argv: list[str] | None = None) -> None:
    run(stage_params(__doc__, argv))


if __name__ == "__main__":
    main()
