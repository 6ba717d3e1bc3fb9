"""The λr ablation (OneGen App. G.3.1) as DVC experiments: deployment `onegen/lambda-sweep`.

For each λr (params `loss.lambda_r`, optionally with a fixed λg `loss.lambda_g` and loss kind `loss.kind`)
the flow runs one DVC experiment in the workspace — train and evaluate, the data stages being unchanged —
with ONEGEN_MLFLOW_TAGS carrying the sweep id and λr and ONEGEN_MLFLOW_PARENT_RUN_ID nesting the training
run under the sweep's MLflow run. The experiment is what `dvc exp run -n <sweep>-lr<λr> -S loss.lambda_r=<λr>
[-S …] <until>` makes: `-S` only writes the keys into params.yaml before running, so the flow writes them
itself (flows.params_file.write_overrides: same keys, layout kept, floats that every YAML reader reads back)
and runs `dvc exp run -n <name> <until>`, which records them as the experiment's params. Each point's figures
come from its training run in MLflow (train metrics such as `val/recall_at_1` and the final `loss`, and the
`eval/…` metrics the evaluate stage logs there) and from the metrics files; absent ones stay empty.
The comparison table (CSV + markdown) and a plot of each metric against λr are logged as artifacts of the
sweep run (and kept under runs/sweeps/<sweep id>/).

Each point rewrites params.yaml; the flow puts the file back as it found it when the sweep ends (the
workspace's outputs are then the last point's: `dvc exp show` lists every point, `dvc exp apply <name>`
brings one back). DVC's temporary-directory experiments (`--temp`, `--queue`) are not
used because params.yaml reads the data through ../shared, which a copy under .dvc/tmp would not see.
"""
from __future__ import annotations

import csv
import json
import math
import secrets as _secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.dvc_stages import STAGES, dvc_cmd, stage_chain, stage_env
from flows.params_file import merged_overrides, write_overrides
from flows.project import FlowError, git_head, load_project_params, project_root
from flows.redaction import redact, refuse_secrets, secret_values
from flows.run_tracking import FlowRun, evaluate_metrics_path, numeric_leaves, open_run, read_json
from flows.subprocesses import stream_command
from onegen_core.data.atomic_write import write_bytes_atomic
from tasks.adapters import tracking

# plotted when present, in this order (higher is better unless the name says loss)
DEFAULT_PLOT_METRICS = (
    "eval/hotpotqa/distractor/onegen/recall_at_1_subquery", "eval/hotpotqa/distractor/onegen/em",
    "eval/hotpotqa/distractor/onegen/f1", "eval/hotpotqa/distractor/onegen/recall_at_1_question", "eval/el/onegen/el_f1",
    "val/recall_at_1", "val/recall_at_5", "retrieval_loss_last", "lm_loss_last",
)
TRAIN_JSON_KEYS = ("steps", "seconds", "lm_loss_first", "lm_loss_last", "retrieval_loss_first", "retrieval_loss_last")


def exp_name(sweep_id: str, lam: float) -> str:
    """A git-ref-safe experiment name: sweep-…-lr0p5."""
    return f"{sweep_id}-lr{format(lam, 'g').replace('.', 'p').replace('-', 'm').replace('+', '')}"


def collect_point(root: Path, p, lam: float) -> dict[str, Any]:
    """The figures of the point just run: its training run's latest MLflow metrics, metrics/train.json and
    metrics/evaluate.json. Missing sources leave their columns out."""
    row: dict[str, Any] = {}
    train = read_json(root / p.train_data.metrics_path) or {}
    for k in TRAIN_JSON_KEYS:
        if isinstance(train.get(k), (int, float)):
            row[k] = train[k]
    run_id = train.get("mlflow_run_id", "")
    row["mlflow_run_id"] = run_id
    if run_id:
        from mlflow.exceptions import MlflowException

        client = tracking.client_for(tracking.tracking_uri(p.mlflow.tracking_uri, root))
        try:
            row.update(client.get_run(run_id).data.metrics)
        except MlflowException:
            pass
    ev = read_json(root / evaluate_metrics_path(p))
    if ev:
        for k, v in numeric_leaves(ev).items():
            row.setdefault(f"evaluate.json/{k}", v)
    return row


def tag_point_run(root: Path, p, run_id: str, tags: dict[str, Any], parent_run_id: str) -> None:
    """Tag a point's training run for this sweep and nest it under the sweep's run. The training run may
    have been reused (same settings seen before): it is tagged for this sweep anyway, and keeps the parent
    it already has."""
    client = tracking.client_for(tracking.tracking_uri(p.mlflow.tracking_uri, root))
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))
    if "mlflow.parentRunId" not in client.get_run(run_id).data.tags:
        client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)


@task(name="dvc-exp-run", cache_policy=NO_CACHE)
def sweep_point(project_dir: str, until: str, lam: float, common: dict[str, Any], name: str, sweep_id: str,
                parent_run_id: str) -> dict[str, Any]:
    """One λr: `dvc exp run` of the pipeline up to `until`; returns the point's table row."""
    log = get_run_logger()
    root = Path(project_dir)
    sets = {**common, "loss.lambda_r": lam}
    write_overrides(root, sets, log, backup=False)  # = the -S of `dvc exp run -S k=v …`
    cmd = dvc_cmd("exp", "run", "-n", name, until)
    tags = {"onegen.sweep": sweep_id, "onegen.lambda_r": lam, "onegen.flow": "lambda-sweep", "onegen.exp": name}
    secrets = secret_values(root)
    log.info("λr=%g: %s (params: %s)", lam, " ".join(cmd[2:]), redact(json.dumps(sets), secrets))
    t0 = time.perf_counter()
    rc, last = stream_command(cmd, root, stage_env(root, tracking.caller_env(parent_run_id, tags)), log, secrets)
    if rc != 0:
        raise FlowError(f"`dvc exp run` for λr={lam:g} failed (exit {rc}); last lines:\n" + "\n".join(last[-15:]))
    p = load_project_params(root)
    if p.loss.lambda_r != lam:  # a profile that sets loss.lambda_r wins over params.yaml: the point trained something else
        raise FlowError(f"λr={lam:g}: the resolved params have loss.lambda_r={p.loss.lambda_r:g}; profile "
                        f"{p.profile!r} sets it and overrides the sweep's value. Sweep without that profile "
                        "or remove loss.lambda_r from it")
    row = {"lambda_r": lam, "lambda_g": p.loss.lambda_g, "loss_kind": p.loss.kind, "exp": name,
           "seconds_point": round(time.perf_counter() - t0, 1), **collect_point(root, p, lam)}
    if row.get("mlflow_run_id"):
        tag_point_run(root, p, row["mlflow_run_id"], tags, parent_run_id)
    log.info("λr=%g done in %.0f s: MLflow run %s", lam, row["seconds_point"], row.get("mlflow_run_id") or "-")
    return row


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def write_table(rows: list[dict[str, Any]], out: Path, metric_order: tuple[str, ...]) -> list[str]:
    """rows -> sweep.csv (every figure collected) and sweep.md (the compared metrics only), one row per λr,
    sorted; returns the CSV's columns."""
    first = ["lambda_r", "lambda_g", "loss_kind", "status"]
    present = {k for r in rows for k in r}
    metrics = [m for m in metric_order if m in present]
    rest = sorted(present - set(first) - set(metrics) - {"exp", "mlflow_run_id", "error"})
    cols = [c for c in first if c in present] + metrics + rest + [c for c in ("exp", "mlflow_run_id", "error") if c in present]
    rows = sorted(rows, key=lambda r: r["lambda_r"])
    with open(out / "sweep.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    short = [c for c in first if c in present] + metrics + [c for c in ("mlflow_run_id", "error") if c in present]
    md = ["| " + " | ".join(short) + " |", "|" + "---|" * len(short)]
    md += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "/") for c in short) + " |" for r in rows]
    (out / "sweep.md").write_text("\n".join(md) + "\n")
    return cols


def write_plot(rows: list[dict[str, Any]], out: Path, metrics: list[str]) -> str | None:
    """Each metric against λr (symlog axis, as λr = 0 is a point); None if no metric has a value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in sorted(rows, key=lambda r: r["lambda_r"]) if r.get("status") == "ok"]
    shown = [m for m in metrics if any(isinstance(r.get(m), (int, float)) and math.isfinite(r[m]) for r in ok)][:6]
    if not shown:
        return None
    ncols = min(3, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, shown):
        pts = [(r["lambda_r"], r[m]) for r in ok if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o")
        ax.set_xscale("symlog", linthresh=min([x for x, _ in pts if x > 0] or [1.0]))
        ax.set_xticks([x for x, _ in pts], [f"{x:g}" for x, _ in pts])
        ax.set_xlabel("λr (loss.lambda_r)")
        ax.set_title(m, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("OneGen λr ablation (App. G.3.1)")
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)
    plt.close(fig)
    return "sweep.png"


def best_point(rows: list[dict[str, Any]], metrics: list[str]) -> tuple[str, float, float] | None:
    """(metric, λr, value) of the best successful point on the first of `metrics` that any such point
    has: the lowest for a loss, else the highest; None if none has a value."""
    ok = [r for r in rows if r["status"] == "ok"]
    for m in metrics:
        vals = [r for r in ok if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
        if vals:
            pick = (min if "loss" in m else max)(vals, key=lambda r: r[m])
            return m, pick["lambda_r"], pick[m]
    return None


@dataclass(frozen=True)
class SweepPlan:
    """A sweep checked before any point runs: where, up to which stage, the λr values and the settings
    every point shares."""

    root: Path
    target: str  # the last stage of every experiment
    lambda_r: list[float]
    common: dict[str, Any]  # params overrides of every point (λr aside)
    sweep_id: str
    names: dict[float, str]  # λr -> DVC experiment name
    params: Any  # the resolved params of the last point (its MLflow settings are the sweep's)


def plan_sweep(lambda_r: list[float], lambda_g: float | None, loss_kind: str | None,
               overrides: dict[str, Any] | None, profile: str | None, experiment: str | None, project_dir: str,
               until: str | None, sweep_id: str | None) -> SweepPlan:
    """Every check of the flow's arguments, so that a mistake stops the sweep before the first point:
    the stages, the λr values, a git repository, the overrides (no secret, no λr, every point's params
    loadable) and the sweep id."""
    from onegen_core.config import ConfigError

    root = project_root(project_dir)
    target = stage_chain(root, until or STAGES[-1])[-1]
    if not lambda_r:
        raise FlowError("lambda_r: give at least one value")
    if len(set(lambda_r)) != len(lambda_r):
        raise FlowError(f"lambda_r: repeated values in {lambda_r}")
    if not git_head(root):
        raise FlowError(f"{root}: DVC experiments need a git repository with a commit")
    common = merged_overrides(overrides, profile=profile, **{"mlflow.experiment": experiment,
                                                             "loss.lambda_g": lambda_g, "loss.kind": loss_kind})
    if "loss.lambda_r" in common:
        raise FlowError("loss.lambda_r is what the sweep varies: pass it as lambda_r, not as an override")
    refuse_secrets(common, secret_values(root), "overrides")
    for lam in lambda_r:  # every point's params must load before the first one runs
        try:
            p = load_project_params(root, {**common, "loss.lambda_r": lam})
        except ConfigError as e:
            raise FlowError(f"λr={lam}: {e}") from None
    sweep_id = sweep_id or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{_secrets.token_hex(2)}"
    if not tracking.SAFE_ID.fullmatch(sweep_id):  # checked before any run opens (sweep_view checks it too)
        raise FlowError(f"sweep_id {sweep_id!r}: letters, digits, '_', '.', '-' only")
    return SweepPlan(root, target, list(lambda_r), common, sweep_id,
                     {lam: exp_name(sweep_id, lam) for lam in lambda_r}, p)


def open_sweep_run(plan: SweepPlan, log) -> tuple[FlowRun, str]:
    """The sweep's MLflow run and the URL of its points side by side, ordered by λr, in the MLflow UI."""
    root, sweep_id = plan.root, plan.sweep_id
    run = open_run(root, plan.params, sweep_id,
                   {"onegen.kind": "lambda-sweep", "onegen.sweep": sweep_id, "git.commit": git_head(root)},
                   {"lambda_r": plan.lambda_r, "overrides": plan.common, "until": plan.target,
                    "project_dir": str(root)})
    log.info("sweep %s: λr %s, up to stage %s, overrides %s; MLflow run %s", sweep_id, plan.lambda_r, plan.target,
             json.dumps(plan.common) if plan.common else "none", run.run_id)
    # a server's URL, else a local store, which `onegen ui` serves on :5000
    served = run.tracking_uri.startswith(("http://", "https://"))
    view_url = tracking.runs_view_url(run.tracking_uri if served else "http://127.0.0.1:5000", run.experiment_id,
                                      tracking.sweep_view(run.client, run.experiment_id, sweep_id))
    log.info("the points side by side, by λr, in the MLflow UI%s: %s", "" if served else " (`onegen ui`)", view_url)
    return run, view_url


@contextmanager
def params_restored(root: Path, sweep_id: str, log) -> Iterator[None]:
    """Each point rewrites params.yaml: put it back as it was when the block ends, however it ends. A copy
    is kept under .dvc/tmp/onegen/ should this process die mid-sweep."""
    params_path = root / "params.yaml"
    original = params_path.read_bytes()
    saved = root / ".dvc" / "tmp" / "onegen" / f"params.yaml.before-{sweep_id}"
    write_bytes_atomic(saved, original)  # should this process die mid-sweep
    log.info("params.yaml saved to %s; it is restored when the sweep ends", saved)
    try:
        yield
    finally:
        if params_path.read_bytes() != original:
            write_bytes_atomic(params_path, original)
            log.warning("params.yaml restored as it was before the sweep; the workspace outputs are those of the "
                        "last point (`dvc exp show` lists the points, `dvc exp apply <name>` restores one)")


def run_points(plan: SweepPlan, parent_run_id: str, log) -> list[dict[str, Any]]:
    """One task per λr, in order; a failed point becomes a row with its error, and the others still run."""
    rows: list[dict[str, Any]] = []
    for lam in plan.lambda_r:
        point = sweep_point.with_options(task_run_name=f"lambda_r={lam:g}")
        try:
            rows.append({**point(str(plan.root), plan.target, lam, plan.common, plan.names[lam], plan.sweep_id,
                                 parent_run_id), "status": "ok"})
        except Exception as e:  # noqa: BLE001 - one failed point must not lose the others
            log.error("λr=%g failed: %s", lam, e)
            rows.append({"lambda_r": lam, "exp": plan.names[lam], "status": "failed",
                         "error": str(e).splitlines()[0][:200]})
    return rows


def report_sweep(rows: list[dict[str, Any]], plan: SweepPlan, run: FlowRun, metrics: list[str] | None,
                 log) -> tuple[Path, tuple[str, float, float] | None]:
    """The comparison (sweep.csv, sweep.md, sweep.png, rows.json) under runs/sweeps/<sweep id>/ and as
    artifacts of the sweep's run, the best point tagged on it, and the run ended (FAILED if a point
    failed). Returns (the folder, the best point)."""
    out = plan.root / "runs" / "sweeps" / plan.sweep_id
    out.mkdir(parents=True, exist_ok=True)
    order = tuple(metrics) if metrics else DEFAULT_PLOT_METRICS
    write_table(rows, out, order)
    present = [m for m in order if any(m in r for r in rows)]
    plot = write_plot(rows, out, present or list(order))
    (out / "rows.json").write_text(json.dumps(rows, indent=2, default=str))
    run.client.log_artifacts(run.run_id, str(out), artifact_path="sweep")
    best = best_point(rows, present)
    if best:
        m, lam, value = best
        run.client.set_tag(run.run_id, "onegen.sweep.best", f"{m}: λr={lam:g} ({value:.4g})")
    failed = any(r["status"] != "ok" for r in rows)
    run.client.set_terminated(run.run_id, status="FAILED" if failed else "FINISHED")
    log.info("comparison table:\n%s", (out / "sweep.md").read_text())
    log.info("artifacts: sweep/sweep.csv, sweep/sweep.md%s on %s (also in %s)",
             ", sweep/" + plot if plot else " (no metric to plot)", run.location(), out)
    return out, best


@flow(name="onegen", log_prints=True)
def lambda_sweep(lambda_r: list[float] = [0.0, 1.0, 4.0],  # noqa: B006 - Prefect needs a JSON default
                 lambda_g: float | None = None, loss_kind: str | None = None, overrides: dict[str, Any] | None = None,
                 profile: str | None = None, experiment: str | None = None, project_dir: str = "",
                 until: str | None = None, metrics: list[str] | None = None, sweep_id: str | None = None) -> dict[str, Any]:
    """Train (and evaluate) once per λr as DVC experiments and compare them.

    Args:
        lambda_r: the λr values (params `loss.lambda_r`).
        lambda_g: λg for every point (params `loss.lambda_g`); None keeps params.yaml's.
        loss_kind: `bpr` or `info_nce` for every point (params `loss.kind`); None keeps params.yaml's.
        overrides: further params keys for every point, dotted KEY -> value.
        profile: a paper profile (profiles/<name>.yaml); None keeps params.yaml's.
        experiment: MLflow experiment (params `mlflow.experiment`); None keeps params.yaml's.
        project_dir: the DVC project (a git repository); '' = the current directory.
        until: the last stage of each experiment (default: evaluate).
        metrics: the metrics to plot (default: the eval/… ones, val/recall_at_1 and the losses, when present).
        sweep_id: tag value grouping the runs (default: sweep-<time>-<random>).
    """
    log = get_run_logger()
    plan = plan_sweep(lambda_r, lambda_g, loss_kind, overrides, profile, experiment, project_dir, until, sweep_id)
    run, view_url = open_sweep_run(plan, log)
    with params_restored(plan.root, plan.sweep_id, log):
        rows = run_points(plan, run.run_id, log)
    out, best = report_sweep(rows, plan, run, metrics, log)
    failed = [r["lambda_r"] for r in rows if r["status"] != "ok"]
    if failed:
        raise FlowError(f"sweep {plan.sweep_id}: λr {failed} failed (see the table and the logs above)")
    log.info("the points side by side, by λr: %s", view_url)
    return {"sweep_id": plan.sweep_id, "rows": rows, "best": best,
            "mlflow": {"tracking_uri": run.tracking_uri, "experiment_id": run.experiment_id,
                       "parent_run_id": run.run_id, "view_url": view_url},
            "out_dir": str(out)}
