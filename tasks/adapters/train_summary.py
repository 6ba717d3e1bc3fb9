"""The figures of a finished training run: rank 0's step log read back, and the summary the `train`
stage writes to `train_data.metrics_path` (first and last losses, throughput, validation before/after).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from onegen_core.config import Params


def read_history(path: Path) -> list[dict]:
    """Rank 0's step log; a resumed run re-logs the steps after its checkpoint: the last wins.

    Plain `json.loads`, not the strict data reader: the log is this project's own output, and a step's
    figures may be NaN (no retrieval pair in a step), which Python's JSON writes and reads back."""
    rows: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            rows[r["step"]] = {**rows.get(r["step"], {}), **r}
    return [rows[k] for k in sorted(rows)]


def under_project(path: str) -> str:
    """A path inside the project as relative to it (metrics files are committed; this machine's
    absolute paths mean nothing elsewhere); a path elsewhere (shared storage, s3://) as given."""
    if "://" in path or not os.path.isabs(path):
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def mean_of(key: str, rows: list[dict]) -> float:
    """Mean of `key` over the rows that have it, NaNs left out; NaN when none has it."""
    xs = [r[key] for r in rows if key in r and r[key] == r[key]]
    return sum(xs) / len(xs) if xs else float("nan")


def summarise(rows: list[dict], p: Params, run_name: str, run_id: str, tracking_uri: str, out: str,
              ray_checkpoint: str) -> dict[str, Any]:
    """The run's summary: losses averaged over the first and the last tenth of the steps, throughput
    (the first step, which compiles and warms up, left out), and the first and last validation."""
    from tasks.adapters import tracking

    steps = [r for r in rows if r["step"] > 0 and "loss" in r]
    vals = [r for r in rows if "val/recall_at_1" in r]
    window = max(1, len(steps) // 10)
    return {
        "ray_run": run_name,
        "mlflow_run_id": run_id,
        "mlflow_tracking_uri": tracking.portable_uri(tracking_uri),  # relative to the project, as params give it
        "mlflow_experiment": p.mlflow.experiment,
        "checkpoint": out,
        "ray_checkpoint": under_project(ray_checkpoint),
        "workers": p.distributed.num_workers,
        "steps": len(steps),
        "lm_loss_first": mean_of("lm_loss", steps[:window]),
        "lm_loss_last": mean_of("lm_loss", steps[-window:]),
        "retrieval_loss_first": mean_of("retrieval_loss", steps[:window]),
        "retrieval_loss_last": mean_of("retrieval_loss", steps[-window:]),
        "tokens_per_s": mean_of("tokens_per_s", steps[1:] or steps),
        # of the negatives drawn, the share from the query's own example (loss.own_negatives_first)
        "own_negative_share": mean_of("own_negative_share", steps),
        "val_before": {k[4:]: v for k, v in vals[0].items() if k.startswith("val/")} if vals else {},
        "val_after": {k[4:]: v for k, v in vals[-1].items() if k.startswith("val/")} if vals else {},
    }
