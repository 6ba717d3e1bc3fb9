"""Print the headline figures of the pipeline's metrics files (what `make run` ends with)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str] | None = None) -> None:
    metrics = Path("metrics")
    tr = metrics / "train.json"
    if tr.is_file():
        r = json.loads(tr.read_text())
        b, a = r["val_before"], r["val_after"]
        print(f"train: {r['steps']} steps on {r['workers']} Ray workers (DeepSpeed) in {r['seconds']:.0f} s -> {r['checkpoint']}")
        print(f"  Lg {r['lm_loss_first']:.3f} -> {r['lm_loss_last']:.3f}, Lr {r['retrieval_loss_first']:.3f} -> "
              f"{r['retrieval_loss_last']:.3f}; validation ({int(a.get('queries', 0))} [RQ]) Recall@1 "
              f"{b.get('recall_at_1', float('nan')):.3f} -> {a.get('recall_at_1', float('nan')):.3f}")
        print(f"  MLflow: run {r['mlflow_run_id']} in experiment '{r['mlflow_experiment']}' at {r['mlflow_tracking_uri']}"
              f" (model version {r.get('model_version') or '-'}); browse with `mlflow ui --backend-store-uri "
              f"{r['mlflow_tracking_uri']}`")
    enc = metrics / "encode.json"
    if enc.is_file():
        e = json.loads(enc.read_text())
        print(f"encode: {e['units_in_index']} [RD] vectors of {e['documents']} documents in {e['uri']}"
              f" (checkpoint {e['checkpoint_id']}; {e['units_truncated']} units cut by truncation)")
    ev = metrics / "evaluate.json"
    if ev.is_file():
        from tasks.eval_report import headline, headline_table

        r = json.loads(ev.read_text())
        print(headline(r))
        print(headline_table(r))
        mh = r.get("multihop", {}).get("hotpotqa", {}).get("distractor", {})
        if mh:
            print("  HotpotQA distractor, same generator: " + "; ".join(
                f"{k} R@1 {100 * a['recall_at_1_subquery']:.1f} (sub-query)" for k, a in mh.items()))
        if r.get("mlflow"):
            m = r["mlflow"]
            print(f"  MLflow: evaluate run {m['run_id']} under training run {m['parent_run_id'] or '-'} at {m['tracking_uri']}")
        print("  report: reports/evaluate/report.md")
    for name in ("prepared", "label"):
        rep = Path("data") / name / "report.json"
        if rep.is_file():
            d = json.loads(rep.read_text())
            keys = ("multihop", "kb") if name == "prepared" else ("train", "val", "multihop_examples", "el_examples")
            print(f"{name}: " + json.dumps({k: d[k] for k in keys if k in d}))


if __name__ == "__main__":
    main(sys.argv[1:])
