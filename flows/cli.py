"""The `onegen` command. Heavy libraries are imported inside each subcommand, so `--help` is fast."""
from __future__ import annotations

import argparse
import os
import sys

from flows.dvc_stages import STAGES
from tasks.serving.cli import COMMANDS as MODEL_COMMANDS
from tasks.serving.cli import add_commands as add_model_commands


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--profile", default=None,
                    help="paper profile laid over params.yaml (profiles/<name>.yaml); default: params.yaml's")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params.yaml key (value read as YAML), e.g. -S train.max_steps=2; repeatable")
    ap.add_argument("--experiment", default=None, help="MLflow experiment (params mlflow.experiment)")
    ap.add_argument("--project-dir", default=".", help="the DVC project (default: the current directory)")
    ap.add_argument("--until", choices=STAGES, default=None, help="last stage to run (default: evaluate)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onegen", description="OneGen: one-pass generation and retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pipeline_commands(sub)
    _add_server_commands(sub)
    add_model_commands(sub)  # ask, link, index, api: tasks/serving/cli.py defines them, commands.py runs them
    return parser


def _add_pipeline_commands(sub) -> None:
    """`repro` and `sweep`: the Prefect flows over the DVC stages."""
    rp = sub.add_parser("repro", help="run the pipeline (Prefect flow over DVC stages); unchanged stages are skipped",
                        description="Run prepare -> annotate -> label -> train -> encode -> evaluate through DVC "
                                    "as the Prefect flow `onegen` (the same flow as deployment onegen/full-repro). "
                                    "Overrides are written into params.yaml (changes logged, previous file kept "
                                    "under .dvc/tmp/onegen/). Without PREFECT_API_URL, Prefect starts a temporary "
                                    "local server for the run.")
    _common(rp)

    sp = sub.add_parser("sweep", help="λr ablation: one DVC experiment per value, compared in MLflow",
                        description="Train and evaluate once per λr (params loss.lambda_r) with `dvc exp run -S`, "
                                    "then log a comparison table (CSV, markdown) and a plot of each metric against "
                                    "λr as artifacts of a sweep MLflow run. params.yaml is restored afterwards.")
    sp.add_argument("--lambda-r", type=float, nargs="+", required=True, metavar="X", help="λr values, e.g. 0 1 4")
    sp.add_argument("--lambda-g", type=float, default=None, help="λg for every point (params loss.lambda_g)")
    sp.add_argument("--loss-kind", choices=("bpr", "info_nce"), default=None, help="retrieval loss (params loss.kind)")
    sp.add_argument("--metric", action="append", default=None, help="metric(s) to plot (default: eval/…, val/recall_at_1, losses)")
    _common(sp)


def _add_server_commands(sub) -> None:
    """`serve` (the Prefect deployments) and `ui` (MLflow's UI)."""
    sv = sub.add_parser("serve", help="serve the deployments onegen/full-repro and onegen/lambda-sweep",
                        description="Serve the two deployments from this process (runs execute here, one at a time). "
                                    "If PREFECT_API_URL is unset, a Prefect server is started on --host:--port first. "
                                    "Then, elsewhere: PREFECT_API_URL=http://HOST:PORT/api prefect deployment run "
                                    "onegen/full-repro --watch")
    sv.add_argument("--project-dir", default=".", help="the project the deployments run in (default: here)")
    sv.add_argument("--host", default="127.0.0.1", help="Prefect server address (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=4200, help="Prefect server port (default: 4200)")
    sv.add_argument("--limit", type=int, default=1, help="concurrent runs (default 1: runs share one workspace)")

    ui = sub.add_parser("ui", help="MLflow UI over the project's tracking store",
                        description="mlflow ui --backend-store-uri <params mlflow.tracking_uri, resolved> "
                                    "--host 127.0.0.1 --port 5000 --workers 1")
    ui.add_argument("--project-dir", default=".", help="the project whose params.yaml names the store")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default: 5000)")


def _prefect_env() -> None:
    """Before Prefect is imported: no analytics; a patient temporary server when no API is configured."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    from onegen_core.config import ConfigError  # after parsing: `--help` stays light

    try:
        _run(args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except ConfigError as e:  # a bad -S override or params file: say which key, no traceback
        raise SystemExit(f"onegen: {e}") from None


def _run(args: argparse.Namespace) -> None:
    if args.command in MODEL_COMMANDS:
        from tasks.serving.commands import run

        run(args)
    else:
        {"repro": _repro, "sweep": _sweep, "serve": _serve, "ui": _ui}[args.command](args)


def _repro(args: argparse.Namespace) -> None:
    from onegen_core.config import parse_overrides

    overrides = parse_overrides(args.set)
    _prefect_env()
    from flows.full_repro import full_repro

    out = full_repro(profile=args.profile, overrides=overrides or None, experiment=args.experiment,
                     project_dir=os.path.abspath(args.project_dir), until=args.until)
    print(f"MLflow: {out['mlflow']['where']}")


def _sweep(args: argparse.Namespace) -> None:
    from onegen_core.config import parse_overrides

    overrides = parse_overrides(args.set)
    _prefect_env()
    from flows.lambda_sweep import lambda_sweep

    out = lambda_sweep(lambda_r=args.lambda_r, lambda_g=args.lambda_g, loss_kind=args.loss_kind,
                       overrides=overrides or None, profile=args.profile, experiment=args.experiment,
                       project_dir=os.path.abspath(args.project_dir), until=args.until, metrics=args.metric)
    print(f"sweep {out['sweep_id']}: table and plot in {out['out_dir']} and on MLflow run "
          f"{out['mlflow']['parent_run_id']}; the points by λr: {out['mlflow']['view_url']}")


def _serve(args: argparse.Namespace) -> None:
    _prefect_env()
    from flows.serve import serve

    serve(os.path.abspath(args.project_dir), host=args.host, port=args.port, limit=args.limit)


def _ui(args: argparse.Namespace) -> None:
    """`mlflow ui` over the project's store, after printing the links to its runs and sweeps."""
    import subprocess

    from flows.project import load_project_params, project_root
    from flows.serve import mlflow_ui_command, server_env
    from tasks.adapters import tracking

    root = project_root(args.project_dir)
    p = load_project_params(root)
    uri = tracking.tracking_uri(p.mlflow.tracking_uri, root)
    cmd = mlflow_ui_command(uri, args.host, args.port)
    print(" ".join(cmd), flush=True)
    exp = tracking.client_for(uri).get_experiment_by_name(p.mlflow.experiment)
    if exp is not None:  # the runs table in the model-training view, with the compared metrics
        base = f"http://{args.host}:{args.port}"
        print(f"runs: {tracking.runs_view_url(base, exp.experiment_id)}", flush=True)
        for key in tracking.sweep_view_keys(exp.tags)[-5:]:  # the newest sweeps' points, by λr
            print(f"{key}: {tracking.runs_view_url(base, exp.experiment_id, key)}", flush=True)
    raise SystemExit(subprocess.call(cmd, env=server_env(), cwd=root))


if __name__ == "__main__":
    main()
