"""Teacher-forced retrieval of trained checkpoints on the label stage's validation split, side by side:
Recall@k over each query's own candidates (what `train` logs as `val/...`: a question's own paragraphs,
a window's own entities) and over every unit of the validation examples (`open_*`: other questions'
paragraphs and other windows' entities compete as well, as in the open setting).

Choose settings here, never on the held-out questions `evaluate` scores.

    python -m bench.val_retrieval --checkpoint uniform=runs/a/models/core --checkpoint own=models/core

Writes metrics/val_retrieval.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from onegen_core.config import BackboneConfig, load_params, parse_overrides
from onegen_core.evaluation.retrieval import retrieval_recall
from onegen_core.method.backbone import load_pretrained
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.precision import resolve_inference_dtype
from onegen_core.training.dataset import validation_examples

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("recall_at_1", "recall_at_5", "open_recall_at_1", "open_recall_at_5", "queries", "open_candidates")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH",
                    help="a trained checkpoint directory, named (repeat to compare)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default="metrics/val_retrieval.json")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    args = ap.parse_args(argv)
    p = load_params(args.params, parse_overrides(args.set))
    named = []
    for spec in args.checkpoint:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_dir():
            raise SystemExit(f"--checkpoint {spec!r}: give NAME=PATH with an existing checkpoint directory")
        named.append((name, path))
    # the validation examples `train` validates on: same file, tasks and cap
    val = validation_examples(p.train_data)
    tasks = sorted({e.task for e in val})
    out: dict = {"val_file": p.train_data.val_file, "examples": len(val), "checkpoints": {}}
    for name, path in named:
        t0 = time.perf_counter()
        lm, tok, _ = load_pretrained(path, BackboneConfig(name=path, dtype=resolve_inference_dtype(p.backbone.inference_dtype)))
        model = OneGenModel(lm, p.loss)
        collator = OneGenCollator(tok, p.train.max_length, p.train.max_doc_length, share_negatives=False)
        r = retrieval_recall(model, collator, val, p.train.batch_size, by_task=True)
        res = {"all": {k: v for k, v in r.items() if k in KEYS}}
        for task in tasks:
            res[task] = {k: r[f"{task}/{k}"] for k in KEYS}
        # recorded relative to the project, so the file names no machine's directories
        out["checkpoints"][name] = {"path": os.path.relpath(Path(path).resolve(), ROOT), **res, "seconds": round(time.perf_counter() - t0, 1)}
        for part, r in res.items():
            print(f"{name:>12} {part:>15}: R@1 {r['recall_at_1']:.3f} R@5 {r['recall_at_5']:.3f} | open R@1 "
                  f"{r['open_recall_at_1']:.3f} R@5 {r['open_recall_at_5']:.3f} over {int(r['open_candidates'])} "
                  f"units ({int(r['queries'])} queries)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
