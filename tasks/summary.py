"""Print the headline figures of the pipeline's metrics files (what `make run` ends with)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str] | None = None) -> None:
    metrics = Path("metrics")
    core = metrics / "core_train.json"
    if core.is_file():
        r = json.loads(core.read_text())
        b, a = r["held_out_before"], r["held_out_after"]
        print(f"train: {r['steps']} steps on {r['train_examples']} examples in {r['seconds']:.0f} s -> {r['checkpoint']}")
        print(f"  held-out ({r['held_out_examples']} questions, {int(a['queries'])} [RQ]):"
              f" Lg {b['lm_loss']:.3f} -> {a['lm_loss']:.3f}, Lr {b['retrieval_loss']:.3f} -> {a['retrieval_loss']:.3f},"
              f" Recall@1 {b['recall_at_1']:.3f} -> {a['recall_at_1']:.3f}, Recall@5 {b['recall_at_5']:.3f} -> {a['recall_at_5']:.3f}")
    enc = metrics / "encode.json"
    if enc.is_file():
        e = json.loads(enc.read_text())
        print(f"encode: {e['units_in_index']} [RD] vectors of {e['documents']} documents in {e['uri']}"
              f" (checkpoint {e['checkpoint_id']}; {e['units_truncated']} units cut by truncation)")
    for name in ("prepared", "label"):
        rep = Path("data") / name / "report.json"
        if rep.is_file():
            d = json.loads(rep.read_text())
            keys = ("multihop", "kb") if name == "prepared" else ("train", "val", "multihop_examples", "el_examples")
            print(f"{name}: " + json.dumps({k: d[k] for k in keys if k in d}))


if __name__ == "__main__":
    main(sys.argv[1:])
