"""The figures of a finished training run (`tasks.adapters.train_summary`), on hand-written step logs."""
from __future__ import annotations

import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_read_history_keeps_the_last_row_of_a_step_merged_over_earlier_ones(tmp_path):
    from tasks.adapters.train_summary import read_history

    f = tmp_path / "history.jsonl"
    assert read_history(f) == []
    rows = [{"step": 0, "val/recall_at_1": 0.1}, {"step": 2, "loss": 3.0, "lr": 1.0}, {"step": 1, "loss": 4.0},
            {"step": 2, "loss": 2.5}]  # a resumed run re-logs step 2
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_history(f) == [{"step": 0, "val/recall_at_1": 0.1}, {"step": 1, "loss": 4.0},
                               {"step": 2, "loss": 2.5, "lr": 1.0}]


def test_under_project(tmp_path, monkeypatch):
    from tasks.adapters.train_summary import under_project

    monkeypatch.chdir(tmp_path)
    assert under_project(str(tmp_path.resolve() / "runs" / "ray" / "c")) == "runs/ray/c"
    assert under_project("/elsewhere/c") == "/elsewhere/c"
    assert under_project("s3://b/c") == "s3://b/c"
    assert under_project("rel/c") == "rel/c"


def test_summarise_averages_the_first_and_last_tenth_and_leaves_nans_out():
    from onegen_core.config import load_params
    from tasks.adapters.train_summary import summarise

    p = load_params(ROOT / "params.yaml", {"mlflow.experiment": "e", "distributed.num_workers": 2})
    steps = [{"step": s, "loss": 1.0, "lm_loss": float(s), "retrieval_loss": float("nan") if s == 1 else 10.0 * s,
              "tokens_per_s": 100.0 * s} for s in range(1, 21)]
    steps[0]["own_negative_share"] = 0.5
    steps[1]["own_negative_share"] = 0.25
    rows = [{"step": 0, "val/recall_at_1": 0.1, "val/queries": 4}, *steps,
            {"step": 20, "val/recall_at_1": 0.6, "val/queries": 4}]
    rows[-2].update(rows.pop())  # as read_history merges them
    s = summarise(rows, p, "onegen-x", "rid", "sqlite:////abs/mlruns.db", "models/core", "s3://b/onegen-x/checkpoint_1")
    assert s["steps"] == 20 and s["workers"] == 2 and s["mlflow_experiment"] == "e"
    assert (s["lm_loss_first"], s["lm_loss_last"]) == (1.5, 19.5)  # window: 20 // 10 = 2 steps
    assert (s["retrieval_loss_first"], s["retrieval_loss_last"]) == (20.0, 195.0)  # step 1's NaN left out
    assert s["tokens_per_s"] == sum(100.0 * k for k in range(2, 21)) / 19  # the first step left out
    assert s["own_negative_share"] == 0.375
    assert s["val_before"] == {"recall_at_1": 0.1, "queries": 4}
    assert s["val_after"] == {"recall_at_1": 0.6, "queries": 4}
    assert s["ray_checkpoint"] == "s3://b/onegen-x/checkpoint_1" and s["checkpoint"] == "models/core"
    empty = summarise([], p, "onegen-x", "rid", "sqlite:////abs/mlruns.db", "o", "c")
    assert empty["steps"] == 0 and math.isnan(empty["lm_loss_first"]) and empty["val_before"] == {}
