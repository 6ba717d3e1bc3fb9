"""The `onegen` flow (deployment `onegen/full-repro`): the DVC pipeline prepare → annotate → label → train →
encode → evaluate, one Prefect task per stage, each run by `dvc repro <stage>`.

DVC stays the source of truth: before a stage runs, `dvc status` says whether it (or anything upstream)
changed; an unchanged stage is skipped and reported 'skipped'. Overrides of params.yaml keys are written
into params.yaml before the first stage (comment-preserving; every change logged, the previous file kept
under .dvc/tmp/onegen/), so the outputs DVC records always match the file, as after `dvc exp run -S`.

The flow opens one MLflow run (the parent). Stages that track runs (train, evaluate) read its id from
ONEGEN_MLFLOW_PARENT_RUN_ID and nest under it, and add the tags in ONEGEN_MLFLOW_TAGS. At the end the
parent run gets the headline metrics of metrics/train.json (and evaluate.json, encode.json).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.dvc_stages import STAGE_RETRIES, STAGES, run_dvc_stage, stage_chain
from flows.params_file import merged_overrides, write_overrides
from flows.project import FlowError, git_head, load_project_params, project_root
from flows.redaction import refuse_secrets, secret_values
from flows.run_tracking import FlowRun, headline_metrics, open_run, read_json
from tasks.adapters import tracking


@task(name="dvc-stage", cache_policy=NO_CACHE)
def dvc_stage(stage: str, project_dir: str, parent_run_id: str, tags: dict[str, str]) -> str:
    """One pipeline stage through DVC: 'skipped' when up to date, else `dvc repro <stage>` -> 'ran'."""
    return run_dvc_stage(Path(project_dir), stage, get_run_logger(), tracking.caller_env(parent_run_id, tags))


def stage_task(stage: str):
    """The task of one stage: named after it; retries only where the stage calls remote services."""
    return dvc_stage.with_options(name=stage, task_run_name=stage, **STAGE_RETRIES.get(stage, {"retries": 0}))


def _flow_run_info() -> dict[str, str]:
    try:
        from prefect.runtime import deployment, flow_run

        return {"prefect.flow_run_id": str(flow_run.id or ""), "prefect.flow_run_name": str(flow_run.name or ""),
                "prefect.deployment": str(deployment.name or "")}
    except Exception:  # noqa: BLE001 - only labels
        return {}


@flow(name="onegen", log_prints=True)
def full_repro(profile: str | None = None, overrides: dict[str, Any] | None = None, experiment: str | None = None,
               project_dir: str = "", until: str | None = None) -> dict[str, Any]:
    """Run the OneGen pipeline through DVC.

    Args:
        profile: a paper profile (profiles/<name>.yaml, e.g. paper-multihop-qwen2-1.5b); None keeps
            params.yaml's `profile` ('' = the embedded CPU default).
        overrides: params.yaml keys to set, dotted KEY -> value (e.g. {"train.max_steps": 2}); written into
            params.yaml (logged, previous file kept) so DVC's lock matches what ran.
        experiment: MLflow experiment (params `mlflow.experiment`); None keeps params.yaml's.
        project_dir: the DVC project; '' = the current directory.
        until: last stage to run (default: all of prepare, annotate, label, train, encode, evaluate).
    """
    log = get_run_logger()
    root = project_root(project_dir)
    stages = stage_chain(root, until)  # fails before anything runs if dvc.yaml lacks a stage
    ov = merged_overrides(overrides, profile=profile, **{"mlflow.experiment": experiment})
    refuse_secrets(ov, secret_values(root), "overrides")
    log.info("project %s; stages %s; overrides %s", root, " -> ".join(stages), json.dumps(ov) if ov else "none")
    write_overrides(root, ov, log)
    p = load_project_params(root)

    info = _flow_run_info()
    tags = {"onegen.kind": "full-repro", "onegen.project": str(root), "onegen.profile": p.profile or "embedded-default",
            "git.commit": git_head(root) or "unknown", **info}
    run = open_run(root, p, f"full-repro-{time.strftime('%Y%m%d-%H%M%S')}", tags,
                   {"profile": p.profile, "overrides": ov, "stages": stages, "project_dir": str(root)})
    log.info("MLflow parent run %s (experiment %r at %s)", run.run_id, p.mlflow.experiment, run.tracking_uri)
    child_tags = {"onegen.flow": "full-repro", **{k: v for k, v in info.items() if k == "prefect.flow_run_id" and v}}
    statuses, train_run_id, metrics = run_stages(run, root, p, stages, child_tags)
    ran = [s for s in stages if statuses[s] == "ran"]
    skipped = [s for s in stages if statuses[s] == "skipped"]
    log.info("stages ran: %s; skipped (unchanged): %s", ", ".join(ran) or "none", ", ".join(skipped) or "none")
    for k in sorted(metrics):
        log.info("  %s = %.4g", k, metrics[k])
    where = run.location()
    log.info("MLflow: %s", where)
    return {"stages": statuses, "mlflow": {"tracking_uri": run.tracking_uri, "experiment_id": run.experiment_id,
                                           "parent_run_id": run.run_id, "train_run_id": train_run_id, "where": where},
            "metrics": metrics}


def run_stages(run: FlowRun, root: Path, p, stages: list[str],
               child_tags: dict[str, str]) -> tuple[dict[str, str], str, dict[str, float]]:
    """Each stage in order as its task, its outcome tagged on the parent run, then the headline metrics
    logged there; the parent ends FINISHED, or FAILED with whatever stopped the flow. Returns ({stage:
    'ran' | 'skipped'}, the training run's id ('' if none recorded), the headline metrics)."""
    statuses: dict[str, str] = {}
    try:
        for stage in stages:
            statuses[stage] = stage_task(stage)(stage, str(root), run.run_id, child_tags)
            run.client.set_tag(run.run_id, f"onegen.stage.{stage}", statuses[stage])
        train = read_json(root / p.train_data.metrics_path) or {}
        if train.get("mlflow_run_id"):
            run.client.set_tag(run.run_id, "onegen.train_run_id", train["mlflow_run_id"])
        metrics = headline_metrics(root, p)
        tracking.log_metrics(run.client, run.run_id, metrics)
    except BaseException:
        run.client.set_terminated(run.run_id, status="FAILED")
        raise
    run.client.set_terminated(run.run_id, status="FINISHED")
    return statuses, train.get("mlflow_run_id", ""), metrics


__all__ = ["full_repro", "STAGES", "FlowError"]
