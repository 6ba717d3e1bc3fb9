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
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import (
    STAGE_RETRIES,
    STAGES,
    FlowError,
    git_head,
    headline_metrics,
    load_project_params,
    merged_overrides,
    open_run,
    project_root,
    read_json,
    refuse_secrets,
    run_dvc_stage,
    secret_values,
    stage_chain,
    write_overrides,
)
from tasks import tracking


@task(name="dvc-stage", cache_policy=NO_CACHE)
def dvc_stage(stage: str, project_dir: str, parent_run_id: str, tags: dict[str, str]) -> str:
    """One pipeline stage through DVC: 'skipped' when up to date, else `dvc repro <stage>` -> 'ran'."""
    from pathlib import Path

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
    client, uri, exp_id, parent = open_run(
        root, p, f"full-repro-{time.strftime('%Y%m%d-%H%M%S')}", tags,
        {"profile": p.profile, "overrides": ov, "stages": stages, "project_dir": str(root)})
    log.info("MLflow parent run %s (experiment %r at %s)", parent, p.mlflow.experiment, uri)
    child_tags = {"onegen.flow": "full-repro", **{k: v for k, v in info.items() if k == "prefect.flow_run_id" and v}}
    statuses: dict[str, str] = {}
    try:
        for stage in stages:
            statuses[stage] = stage_task(stage)(stage, str(root), parent, child_tags)
            client.set_tag(parent, f"onegen.stage.{stage}", statuses[stage])
        train = read_json(root / p.train_data.metrics_path) or {}
        if train.get("mlflow_run_id"):
            client.set_tag(parent, "onegen.train_run_id", train["mlflow_run_id"])
        metrics = headline_metrics(root, p)
        tracking.log_metrics(client, parent, metrics)
    except BaseException:
        client.set_terminated(parent, status="FAILED")
        raise
    client.set_terminated(parent, status="FINISHED")
    ran = [s for s in stages if statuses[s] == "ran"]
    skipped = [s for s in stages if statuses[s] == "skipped"]
    log.info("stages ran: %s; skipped (unchanged): %s", ", ".join(ran) or "none", ", ".join(skipped) or "none")
    for k in sorted(metrics):
        log.info("  %s = %.4g", k, metrics[k])
    where = tracking.run_location(uri, exp_id, parent)
    log.info("MLflow: %s", where)
    return {"stages": statuses, "mlflow": {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent,
                                           "train_run_id": train.get("mlflow_run_id", ""), "where": where},
            "metrics": metrics}


__all__ = ["full_repro", "STAGES", "FlowError"]
