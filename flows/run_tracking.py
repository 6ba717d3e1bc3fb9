"""The MLflow run a flow opens (the parent its stages' runs nest under) and the figures it logs there,
read from the pipeline's metrics files. The client itself comes from tasks/adapters/tracking.py, the one
place that resolves MLflow settings.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.adapters import tracking

# figures of metrics/train.json that become the parent run's train/… metrics
TRAIN_HEADLINE = ("steps", "seconds", "lm_loss_first", "lm_loss_last", "retrieval_loss_first",
                  "retrieval_loss_last", "tokens_per_s")


@dataclass(frozen=True)
class FlowRun:
    """A flow's MLflow run: the client that opened it, where the store is, and the run's ids."""

    client: Any  # mlflow.MlflowClient, built by tracking.client_for
    tracking_uri: str
    experiment_id: str
    run_id: str

    def location(self) -> str:
        """Where to look at the run: its URL on a server, or how to open the UI over a local store."""
        return tracking.run_location(self.tracking_uri, self.experiment_id, self.run_id)


def open_run(root: Path, p, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> FlowRun:
    """A new MLflow run in the params' experiment (tags cut to what MLflow stores), with `params` logged."""
    uri = tracking.tracking_uri(p.mlflow.tracking_uri, root)
    client = tracking.client_for(uri)
    exp_id = tracking.ensure_experiment(client, p.mlflow.experiment,
                                        tracking.artifact_location(p.mlflow.artifact_location, root))
    run = client.create_run(exp_id, run_name=run_name, tags={k: str(v)[:5000] for k, v in tags.items()})
    tracking.log_params(client, run.info.run_id, params)
    return FlowRun(client, uri, exp_id, run.info.run_id)


def metric_key(key: str) -> str:
    """`key` as MLflow accepts a metric name: other characters become '_', at most 250 of them."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)[:250]


def numeric_leaves(obj: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in a nested JSON object, keyed by its '/'-joined path."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(numeric_leaves(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix] = float(obj)
    return out


def read_json(path: Path) -> dict[str, Any] | None:
    """A metrics file's JSON object; None when the file is missing, unreadable or not an object (a stage
    that did not run leaves no figures, and the flow reports what there is)."""
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


def evaluate_metrics_path(p) -> str:
    """params evaluate.metrics_path, or its default when the params have no evaluate section."""
    return getattr(getattr(p, "evaluate", None), "metrics_path", "metrics/evaluate.json")


def headline_metrics(root: Path, p) -> dict[str, float]:
    """The pipeline's headline figures from its metrics files: train.json (losses, validation Recall@1),
    encode.json (index size) and evaluate.json (every number in it) when present."""
    out: dict[str, float] = {}
    tr = read_json(root / p.train_data.metrics_path)
    if tr:
        for k in TRAIN_HEADLINE:
            if isinstance(tr.get(k), (int, float)) and math.isfinite(tr[k]):
                out[f"train/{k}"] = float(tr[k])
        for k, v in numeric_leaves(tr.get("val_after") or {}).items():
            out[f"train/val_{k}"] = v
    enc = read_json(root / p.encode.report_path)
    if enc:
        for k in ("documents", "units_in_index", "units_truncated", "seconds"):
            if isinstance(enc.get(k), (int, float)) and not isinstance(enc.get(k), bool):
                out[f"encode/{k}"] = float(enc[k])
    ev = read_json(root / evaluate_metrics_path(p))
    if ev:
        for k, v in list(numeric_leaves(ev).items())[:500]:
            out[f"evaluate/{k}"] = v
    return {metric_key(k): v for k, v in out.items()}
