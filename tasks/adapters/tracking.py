"""The one MLflow adapter: where runs are stored, the experiment, opening and continuing runs, logging
metrics, params and artifacts. The train and evaluate stages, the Ray worker and the Prefect flows all
go through it, so a tracking setting is resolved in one place.

Settings (params `mlflow.*`): `tracking_uri` (a relative sqlite path or a bare path resolves against the
project directory, because Ray workers and DVC run elsewhere), `artifact_location` (a URI as is, a path
resolved against the project, '' = the tracking server's default), `experiment`.
A caller (the Prefect flows) may pass ONEGEN_MLFLOW_PARENT_RUN_ID, which nests a stage's run under
its run, and ONEGEN_MLFLOW_TAGS, a JSON object of extra tags.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from onegen_core.config import EvaluateConfig, MlflowConfig, flatten

log = logging.getLogger("onegen.tracking")
_evaluate_log = logging.getLogger("onegen.evaluate")  # `log_evaluation`'s lines belong to the evaluate stage's log

PARENT_RUN_ENV = "ONEGEN_MLFLOW_PARENT_RUN_ID"
TAGS_ENV = "ONEGEN_MLFLOW_TAGS"
# MLflow 3 opens an experiment in its GenAI view (traces) unless it is tagged as model development
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17's UI takes the view from `?workflowType=` rather than the tag, and shows metric columns only
# when they are selected: a shared view state (an experiment tag the UI reads with `viewStateShareKey`)
# selects the figures a λr sweep compares
VIEW_KEY = "onegen"
COMPARED_COLUMNS = ("params.`loss.lambda_r`", "params.`loss.kind`", "metrics.`val/recall_at_1`",
                    "metrics.`eval/hotpotqa/distractor/onegen/recall_at_1_subquery`",
                    "metrics.`eval/hotpotqa/distractor/onegen/f1`", "metrics.`eval/hotpotqa/distractor/onegen/em`",
                    "metrics.`eval/hotpotqa/open/onegen/recall_at_1_subquery`", "metrics.`eval/el/onegen/el_f1`")
# a sweep id names git refs, an MLflow shared view and a URL parameter, and goes into a search filter
SAFE_ID = re.compile(r"[A-Za-z0-9_.-]+")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
MULTIHOP_METRICS = ("em", "f1", "recall_at_1_subquery", "recall_at_1_question", "unit_recall_at_1", "misses")


def tracking_uri(uri: str, root: str | Path | None = None) -> str:
    """params `mlflow.tracking_uri` with a relative sqlite path (or a bare path, which becomes a sqlite
    store) resolved against `root` (default: the current directory)."""
    base = Path(root) if root is not None else Path.cwd()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((base / uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:
        return "sqlite:///" + str((base / uri).resolve())
    return uri


def portable_uri(uri: str, root: str | Path | None = None) -> str:
    """A sqlite store inside the project (`root`, default the current directory) as the relative URI that
    params use (`sqlite:///mlruns.db`), so that metrics files and checkpoints record no machine's absolute
    path; any other URI unchanged. `tracking_uri(portable_uri(u))` run from the project is `u` again."""
    if not uri.startswith("sqlite:////"):
        return uri
    base = (Path(root) if root is not None else Path.cwd()).resolve()
    try:
        return "sqlite:///" + Path(uri[len("sqlite:///"):]).resolve().relative_to(base).as_posix()
    except ValueError:  # a store outside the project stays absolute
        return uri


def artifact_location(loc: str, root: str | Path | None = None) -> str | None:
    """params `mlflow.artifact_location`: a URI as is, a path resolved against `root`, '' = None (the
    tracking server's default)."""
    if not loc:
        return None
    if _URI_SCHEME.match(loc):
        return loc
    return ((Path(root) if root is not None else Path.cwd()) / loc).resolve().as_uri()


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client, name: str, loc: str | None) -> str:
    """The experiment's id, created (with `loc` as artifact root) when missing, and tagged so that the
    MLflow UI opens it on its runs table, where metrics are compared."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            client.create_experiment(name, artifact_location=loc, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created meanwhile by another stage
            pass
        # read back either way: the shared view tag below is set on a new experiment too
        exp = client.get_experiment_by_name(name)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    view = _view_state("attributes.start_time", False)
    if exp.tags.get(f"mlflow.sharedViewState.{VIEW_KEY}") != view:
        client.set_experiment_tag(exp.experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", view)
    return exp.experiment_id


def runs_view_url(base: str, exp_id: str, key: str = VIEW_KEY) -> str:
    """The experiment's runs table in the model-training view, in the shared view `key` (default: every run,
    newest first, the compared metrics as columns; a sweep's id: that sweep's points by λr)."""
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey={key}"


def _view_state(order_by: str, ascending: bool, search: str = "") -> str:
    """A shared view state as the MLflow UI reads it (the search facets and the selected columns)."""
    state: dict[str, Any] = {"orderByKey": order_by, "orderByAsc": ascending,
                             "selectedColumns": ["attributes.`Source`", *COMPARED_COLUMNS]}
    if search:
        state["searchFilter"] = search
    return json.dumps(state)


def sweep_view(client, exp_id: str, sweep_id: str) -> str:
    """A shared view of one λr sweep: its training runs only (the points; not the sweep's own run nor the
    evaluate runs, which hold no params), ordered by λr, the compared metrics as columns. Ordering by a
    column other than the start time also lists nested runs flat, so the points are side by side rather
    than folded under the sweep's run. Returns the view's key for `runs_view_url`."""
    if not SAFE_ID.fullmatch(sweep_id):
        raise ValueError(f"sweep id {sweep_id!r}: letters, digits, '_', '.', '-' only (it goes into a URL and a filter)")
    search = f"tags.`onegen.sweep` = '{sweep_id}' and params.`loss.kind` != ''"
    client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{sweep_id}",
                              _view_state("params.`loss.lambda_r`", True, search))
    return sweep_id


def sweep_view_keys(tags: dict[str, str]) -> list[str]:
    """The λr sweeps that have a shared view, from an experiment's tags, oldest first (ids start with the time)."""
    prefix = "mlflow.sharedViewState."
    return sorted(k[len(prefix):] for k in tags if k.startswith(prefix + "sweep-"))


def env_tags() -> dict[str, str]:
    """Extra tags a caller passes in ONEGEN_MLFLOW_TAGS (a JSON object)."""
    raw = os.environ.get(TAGS_ENV, "").strip()
    if not raw:
        return {}
    try:
        tags = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{TAGS_ENV} must be a JSON object of tags: {e}") from None
    if not isinstance(tags, dict):
        raise ValueError(f"{TAGS_ENV} must be a JSON object of tags")
    return {str(k): str(v) for k, v in tags.items()}


def env_parent_run() -> str:
    return os.environ.get(PARENT_RUN_ENV, "").strip()


def caller_env(parent_run_id: str | None, tags: dict[str, Any] | None) -> dict[str, str]:
    """The environment a caller sets for a stage so the stage's run nests under `parent_run_id`."""
    env: dict[str, str] = {}
    if parent_run_id:
        env[PARENT_RUN_ENV] = parent_run_id
    if tags:
        env[TAGS_ENV] = json.dumps({k: str(v) for k, v in tags.items()})
    return env


def git_state(root: str | Path | None = None) -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return {"git.commit": commit, "git.dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.CalledProcessError):
        return {"git.commit": "unknown"}


def dvc_hashes(lock: str | Path = "dvc.lock", stages: Iterable[str] = ("prepare", "annotate", "label")) -> dict[str, str]:
    """md5 of every output DVC recorded for `stages`: the data lineage of a run."""
    import yaml

    path = Path(lock)
    if not path.is_file():
        return {}
    recorded = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    out = {}
    for name in stages:
        for o in recorded.get(name, {}).get("outs", []) or []:
            if "md5" in o:
                out[f"dvc.{o['path']}"] = o["md5"]
    return out


def log_params(client, run_id: str, params: dict[str, Any], limit: int = 6000) -> None:
    from mlflow.entities import Param

    items = [Param(k, (v if isinstance(v, str) else json.dumps(v, default=str))[:limit]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # the store takes at most 100 params per batch
        client.log_batch(run_id, params=items[i:i + 100])


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Finite metrics only (NaN marks 'not measured' in our step figures)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i:i + 500])


def new_run(client, exp_id: str, run_name: str, tags: dict[str, Any], params: dict[str, Any] | None = None) -> str:
    """A new run with `tags` (and the caller's ONEGEN_MLFLOW_PARENT_RUN_ID / TAGS); returns its id."""
    tags = {**{k: str(v)[:5000] for k, v in tags.items()}, **env_tags()}
    parent = env_parent_run()
    if parent and "mlflow.parentRunId" not in tags:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    if params:
        log_params(client, run.info.run_id, params)
    return run.info.run_id


def continue_run(client, run_id: str) -> bool:
    """Mark a recorded run RUNNING again (a resume), re-applying the caller's tags and parent; False if
    the run is gone from the store."""
    from mlflow.exceptions import MlflowException

    try:
        prev = client.get_run(run_id)
    except MlflowException:
        return False
    client.update_run(run_id, status="RUNNING")
    for k, v in env_tags().items():
        client.set_tag(run_id, k, v)
    parent = env_parent_run()
    if parent and prev.data.tags.get("mlflow.parentRunId") != parent:
        client.set_tag(run_id, "mlflow.parentRunId", parent)  # the caller now running it
    return True


def finish_run(client, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status=status)


def register_model(client, name: str, run_id: str, artifact_path: str, tags: dict[str, str]) -> str:
    """A new version of registered model `name` from the run's `artifact_path`; returns the version."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # already registered: add a version
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    log.info("registered %s version %s (%s)", name, mv.version, source)
    return str(mv.version)


def run_location(uri: str, exp_id: str, run_id: str) -> str:
    """Where to look at a run: the server URL, or how to open the UI over a local store."""
    view = f"#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{view}"
    return f"run {run_id} in {uri}; `onegen ui` then http://127.0.0.1:5000/{view}"


class StepLogger:
    """Rank 0's logger of step metrics into a run the driver opened."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = client_for(uri)
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        log_metrics(self.client, self.run_id, metrics, step)


# --------------------------------------------------------------------------- the evaluate stage's run


def flat_metrics(result: dict) -> dict[str, float]:
    """MLflow metric names: eval/<dataset>/<setting>/<system>/<metric>, eval/el[/<benchmark>]/<system>/<task>_<p|r|f1>."""
    out: dict[str, float] = {}
    for ds, settings in result.get("multihop", {}).items():
        for setting, systems in settings.items():
            for name, agg in systems.items():
                for m in MULTIHOP_METRICS:
                    out[f"eval/{ds}/{setting}/{name}/{m}"] = float(agg[m])
    for bucket, tasks_ in (result.get("entity_linking", {}).get("elevant_rules") or {}).items():
        prefix = "eval/el_elevant" if bucket == "all" else f"eval/el_elevant/{bucket}"
        out.update(_prf_metrics(f"{prefix}/onegen", tasks_))
    for name, buckets in result.get("entity_linking", {}).get("systems", {}).items():
        for bucket, tasks_ in buckets.items():
            prefix = "eval/el" if bucket == "all" else f"eval/el/{bucket}"
            out.update(_prf_metrics(f"{prefix}/{name}", tasks_))
    return out


def _prf_metrics(prefix: str, tasks_: dict[str, dict[str, float]]) -> dict[str, float]:
    """<prefix>/<task>_p, _r, _f1 of each linking task's precision, recall and F1."""
    return {f"{prefix}/{t}_{short}": float(s[k]) for t, s in tasks_.items()
            for k, short in (("precision", "p"), ("recall", "r"), ("f1", "f1"))}


def log_evaluation(settings: MlflowConfig, cfg: EvaluateConfig, result: dict, out: Path) -> dict[str, str]:
    """A nested `evaluate` run under the run that trained the checkpoint (found in its train_run.json),
    holding every metric and the report (`out`); the headline metrics also go on the training run itself
    so the MLflow UI compares training runs by them. Without a training run, a standalone run. Returns
    where the run is, for the metrics file."""
    from mlflow.exceptions import MlflowException

    meta_file = Path(cfg.checkpoint) / "train_run.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    # train_run.json records the store relative to the project (portable_uri): resolve it here
    uri = tracking_uri(meta.get("mlflow_tracking_uri") or settings.tracking_uri)
    client = client_for(uri)
    parent = meta.get("mlflow_run_id")
    try:
        exp_id = client.get_run(parent).info.experiment_id if parent else None
    except MlflowException:  # the run was deleted or the store moved: evaluate standalone
        _evaluate_log.warning("training run %s not found in %s; logging a standalone evaluate run", parent, uri)
        parent, exp_id = None, None
    if exp_id is None:
        exp_id = ensure_experiment(client, settings.experiment, artifact_location(settings.artifact_location))
    tags = {"onegen.stage": "evaluate", "onegen.checkpoint_id": result["checkpoint_id"]}
    if parent:
        tags["mlflow.parentRunId"] = parent
    rid = new_run(client, exp_id, "evaluate", tags, {f"evaluate.{k}": str(v)[:500] for k, v in flatten(cfg).items()})
    metrics = flat_metrics(result)
    log_metrics(client, rid, metrics)
    client.log_artifacts(rid, str(out), "evaluate")
    client.log_artifact(rid, cfg.metrics_path)
    finish_run(client, rid)
    if parent:
        log_metrics(client, parent, metrics)
    _evaluate_log.info("MLflow: evaluate run %s (parent %s) at %s", rid, parent or "-", uri)
    return {"run_id": rid, "parent_run_id": parent or "", "tracking_uri": portable_uri(uri)}
