"""The λr ablation (OneGen App. G.3.1) as DVC experiments: deployment `onegen/lambda-sweep`.

For each λr (params `loss.lambda_r`, optionally with a fixed λg `loss.lambda_g` and loss kind `loss.kind`)
the flow runs one DVC experiment in the workspace — train and evaluate, the data stages being unchanged —
with ONEGEN_MLFLOW_TAGS carrying the sweep id and λr and ONEGEN_MLFLOW_PARENT_RUN_ID nesting the training
run under the sweep's MLflow run. The experiment is what `dvc exp run -n <sweep>-lr<λr> -S loss.lambda_r=<λr>
[-S …] <until>` makes: `-S` only writes the keys into params.yaml before running, so the flow writes them
itself (flows.common.write_overrides: same keys, layout kept, floats that every YAML reader reads back)
and runs `dvc exp run -n <name> <until>`, which records them as the experiment's params. Each point's figures
come from its training run in MLflow (train metrics such as `val/recall_at_1` and the final `loss`, and the
`eval/…` metrics the evaluate stage logs there) and from the metrics files; absent ones stay empty.
The comparison table (CSV + markdown) and a plot of each metric against λr are logged as artifacts of the
sweep run (and kept under runs/sweeps/<sweep id>/).

Each point rewrites params.yaml; the flow puts the file back as it found it when the sweep ends (the workspace's outputs are then the last point's: `dvc exp show` lists every point,
`dvc exp apply <name>` brings one back). DVC's temporary-directory experiments (`--temp`, `--queue`) are not
used because params.yaml reads the data through ../shared, which a copy under .dvc/tmp would not see.
"""
from __future__ import annotations

import csv
import json
import math
import secrets as _secrets
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import (
    STAGES,
    FlowError,
    dvc_cmd,
    git_head,
    load_project_params,
    merged_overrides,
    numeric_leaves,
    open_run,
    project_root,
    read_json,
    redact,
    refuse_secrets,
    secret_values,
    stage_chain,
    stage_env,
    stream_command,
    write_overrides,
)
from tasks import tracking

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
    ev = read_json(root / getattr(getattr(p, "evaluate", None), "metrics_path", "metrics/evaluate.json"))
    if ev:
        for k, v in numeric_leaves(ev).items():
            row.setdefault(f"evaluate.json/{k}", v)
    return row


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
        # the training run may have been reused (same settings seen before): tag it for this sweep anyway


        client = tracking.client_for(tracking.tracking_uri(p.mlflow.tracking_uri, root))
        for k, v in tags.items():
            client.set_tag(row["mlflow_run_id"], k, str(v))
        if "mlflow.parentRunId" not in client.get_run(row["mlflow_run_id"]).data.tags:
            client.set_tag(row["mlflow_run_id"], "mlflow.parentRunId", parent_run_id)
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
    from onegen_core.config import ConfigError

    for lam in lambda_r:  # every point's params must load before the first one runs
        try:
            p = load_project_params(root, {**common, "loss.lambda_r": lam})
        except ConfigError as e:
            raise FlowError(f"λr={lam}: {e}") from None
    sweep_id = sweep_id or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{_secrets.token_hex(2)}"
    if not tracking.SAFE_ID.fullmatch(sweep_id):  # checked before any run opens (sweep_view checks it too)
        raise FlowError(f"sweep_id {sweep_id!r}: letters, digits, '_', '.', '-' only")
    names = {lam: exp_name(sweep_id, lam) for lam in lambda_r}
    client, uri, exp_id, parent = open_run(
        root, p, sweep_id,
        {"onegen.kind": "lambda-sweep", "onegen.sweep": sweep_id, "git.commit": git_head(root)},
        {"lambda_r": list(lambda_r), "overrides": common, "until": target, "project_dir": str(root)})
    log.info("sweep %s: λr %s, up to stage %s, overrides %s; MLflow run %s", sweep_id, lambda_r, target,
             json.dumps(common) if common else "none", parent)
    served = uri.startswith(("http://", "https://"))  # else a local store, which `onegen ui` serves on :5000
    view_url = tracking.runs_view_url(uri if served else "http://127.0.0.1:5000", exp_id,
                                      tracking.sweep_view(client, exp_id, sweep_id))
    log.info("the points side by side, by λr, in the MLflow UI%s: %s", "" if served else " (`onegen ui`)", view_url)
    params_path = root / "params.yaml"
    original = params_path.read_bytes()
    saved = root / ".dvc" / "tmp" / "onegen" / f"params.yaml.before-{sweep_id}"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_bytes(original)  # should this process die mid-sweep
    log.info("params.yaml saved to %s; it is restored when the sweep ends", saved)
    rows: list[dict[str, Any]] = []
    try:
        for lam in lambda_r:
            point = sweep_point.with_options(task_run_name=f"lambda_r={lam:g}")
            try:
                rows.append({**point(str(root), target, lam, common, names[lam], sweep_id, parent), "status": "ok"})
            except Exception as e:  # noqa: BLE001 - one failed point must not lose the others
                log.error("λr=%g failed: %s", lam, e)
                rows.append({"lambda_r": lam, "exp": names[lam], "status": "failed", "error": str(e).splitlines()[0][:200]})
    finally:
        if params_path.read_bytes() != original:
            params_path.write_bytes(original)
            log.warning("params.yaml restored as it was before the sweep; the workspace outputs are those of the "
                        "last point (`dvc exp show` lists the points, `dvc exp apply <name>` restores one)")
    out = root / "runs" / "sweeps" / sweep_id
    out.mkdir(parents=True, exist_ok=True)
    order = tuple(metrics) if metrics else DEFAULT_PLOT_METRICS
    write_table(rows, out, order)
    present = [m for m in order if any(m in r for r in rows)]
    plot = write_plot(rows, out, present or list(order))
    (out / "rows.json").write_text(json.dumps(rows, indent=2, default=str))
    client.log_artifacts(parent, str(out), artifact_path="sweep")
    best = None
    ok = [r for r in rows if r["status"] == "ok"]
    for m in present:
        vals = [r for r in ok if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
        if vals:
            pick = (min if "loss" in m else max)(vals, key=lambda r: r[m])
            best = (m, pick["lambda_r"], pick[m])
            client.set_tag(parent, "onegen.sweep.best", f"{m}: λr={pick['lambda_r']:g} ({pick[m]:.4g})")
            break
    failed = [r["lambda_r"] for r in rows if r["status"] != "ok"]
    client.set_terminated(parent, status="FAILED" if failed else "FINISHED")
    log.info("comparison table:\n%s", (out / "sweep.md").read_text())
    log.info("artifacts: sweep/sweep.csv, sweep/sweep.md%s on %s (also in %s)",
             ", sweep/" + plot if plot else " (no metric to plot)", tracking.run_location(uri, exp_id, parent), out)
    if failed:
        raise FlowError(f"sweep {sweep_id}: λr {failed} failed (see the table and the logs above)")
    log.info("the points side by side, by λr: %s", view_url)
    return {"sweep_id": sweep_id, "rows": rows, "best": best,
            "mlflow": {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent, "view_url": view_url},
            "out_dir": str(out)}
