"""The `onegen` command. Heavy libraries are imported inside each subcommand, so `--help` is fast."""
from __future__ import annotations

import argparse
import os
import sys

from flows.common import STAGES


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
    _use_the_model(sub)
    return parser


def _model_options(ap: argparse.ArgumentParser) -> None:
    """Where the checkpoint and its index come from (the same settings as the stages)."""
    ap.add_argument("--project-dir", default=".", help="the project whose params.yaml is read (default: here)")
    ap.add_argument("--profile", default=None, help="profile laid over params.yaml (profiles/<name>.yaml)")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key, e.g. -S serve.max_batch_size=4; repeatable")
    ap.add_argument("--checkpoint", default=None, help="checkpoint directory (default: params evaluate.checkpoint)")
    ap.add_argument("--index", default=None, help="LanceDB URI (default: params encode.uri)")


def _use_the_model(sub) -> None:
    """`ask`, `link`, `index add|info`, `api`: tasks/serving/commands.py runs them (docs/SERVING.md)."""
    ak = sub.add_parser("ask", help="answer a question with the trained model, showing each retrieval as it happens",
                        description="Generate an answer; whenever the model emits [RQ], its hidden state searches the "
                                    "passage table and the top passage is pasted in. The text streams as it is "
                                    "generated, each retrieval is printed with rank, score, title and unit text. "
                                    "--json prints one object per question (answer, text, retrievals, counts, "
                                    "finish_reason) instead; questions of --file are then batched.")
    ak.add_argument("question", nargs="?", help="the question (or --file)")
    ak.add_argument("--file", default=None, help="questions, one per line ('-' = stdin)")
    ak.add_argument("--json", action="store_true", help="one JSON object per question (JSONL on stdout)")
    ak.add_argument("--max-tokens", type=int, default=None, help="tokens the model may sample (default: params evaluate.max_new_tokens)")
    ak.add_argument("--max-retrievals", type=int, default=None, help="[RQ] cap (default: params evaluate.max_retrievals)")
    ak.add_argument("--top-k", type=int, default=None, help="hits shown per retrieval (default: params serve.top_k)")
    ak.add_argument("--temperature", type=float, default=None, help="0 = greedy (default); > 0 samples")
    ak.add_argument("--seed", type=int, default=None, help="sampling seed")
    ak.add_argument("--batch-size", type=int, default=None, help="--json: questions per batch (default: serve.max_batch_size)")
    _model_options(ak)

    lk = sub.add_parser("link", help="mark entity mentions in a text and link them to the entity table",
                        description="Copy the text under a constraint, marking mentions as <MENTION>…</MENTION>[RQ]; "
                                    "each [RQ] hidden state searches the entity table. Prints each span with its "
                                    "character offsets, the linked entity (id, title, score) and the other top-k "
                                    "candidates; --json prints ELEVANT linked articles (the evaluate export's shape).")
    lk.add_argument("text", nargs="?", help="the text (or --file)")
    lk.add_argument("--file", default=None, help="a text file (one text), or JSONL {id, text, title?} per line ('-' = stdin)")
    lk.add_argument("--json", action="store_true", help="ELEVANT linked-article JSONL on stdout")
    lk.add_argument("--top-k", type=int, default=None, help="candidates per mention (default: params serve.top_k)")
    lk.add_argument("--max-retrievals", type=int, default=None, help="[RQ] cap per window (default: params evaluate.el_max_retrievals)")
    _model_options(lk)

    ix = sub.add_parser("index", help="add your own documents to the index, or describe it",
                        description="`index add PATH` encodes documents with the checkpoint into a LanceDB table; "
                                    "`index info` prints each table's rows, checkpoint and index type.")
    ixs = ix.add_subparsers(dest="index_command", required=True)
    add = ixs.add_parser("add", help="encode a JSONL file or a folder of .txt/.md files into the index",
                         description="PATH: JSONL with one {id, title, text} per line, or a folder of .txt/.md files "
                                     "cut into passages at blank lines (ids <file>:<n>). Resumable: documents already "
                                     "stored with the same content are skipped; a stored id with other content is "
                                     "refused unless --update. An IVF_PQ index is built at encode.ann_min_rows rows.")
    add.add_argument("path", help="a .jsonl file or a folder")
    add.add_argument("--table", default=None, help="table (default: params encode.table; encode.kb_table for entities)")
    add.add_argument("--granularity", choices=("sentence", "document"), default=None,
                     help="one [RD] per sentence or per passage (default: params encode.granularity; document for the entity table)")
    add.add_argument("--update", action="store_true", help="replace stored documents whose id is given with new content")
    add.add_argument("--ann-min-rows", type=int, default=None, help="build IVF_PQ at this many rows (default: params encode.ann_min_rows)")
    add.add_argument("--batch-size", type=int, default=None, help="documents per forward pass (default: params encode.batch_size)")
    add.add_argument("--json", action="store_true", help="the counts as one JSON object")
    _model_options(add)
    info = ixs.add_parser("info", help="rows, checkpoint and index type of each table",
                          description="Rows, documents, vector size, index type (IVF_PQ or exact) and the checkpoint "
                                      "that encoded each table, checked against the configured checkpoint.")
    info.add_argument("--table", default=None, help="only this table (default: every table)")
    info.add_argument("--json", action="store_true", help="one JSON object")
    _model_options(info)

    ap = sub.add_parser("api", help="HTTP API and web page over the trained model (FastAPI/uvicorn, 127.0.0.1)",
                        description="POST /v1/ask, POST /v1/link (\"stream\": true = server-sent events), GET /v1/health, "
                                    "GET /v1/info, and a web page at /. Concurrent requests are batched (serve.*). "
                                    "A bearer token is required when the environment variable serve.api_key_env "
                                    "names (ONEGEN_API_KEY) is set.")
    ap.add_argument("--host", default=None, help="address to bind (default: params serve.host, 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="port (default: params serve.port)")
    _model_options(ap)


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
    if args.command == "repro":
        from onegen_core.config import parse_overrides

        overrides = parse_overrides(args.set)
        _prefect_env()
        from flows.full_repro import full_repro

        out = full_repro(profile=args.profile, overrides=overrides or None, experiment=args.experiment,
                         project_dir=os.path.abspath(args.project_dir), until=args.until)
        print(f"MLflow: {out['mlflow']['where']}")
    elif args.command == "sweep":
        from onegen_core.config import parse_overrides

        overrides = parse_overrides(args.set)
        _prefect_env()
        from flows.lambda_sweep import lambda_sweep

        out = lambda_sweep(lambda_r=args.lambda_r, lambda_g=args.lambda_g, loss_kind=args.loss_kind,
                           overrides=overrides or None, profile=args.profile, experiment=args.experiment,
                           project_dir=os.path.abspath(args.project_dir), until=args.until, metrics=args.metric)
        print(f"sweep {out['sweep_id']}: table and plot in {out['out_dir']} and on MLflow run "
              f"{out['mlflow']['parent_run_id']}; the points by λr: {out['mlflow']['view_url']}")
    elif args.command == "serve":
        _prefect_env()
        from flows.serve import serve

        serve(os.path.abspath(args.project_dir), host=args.host, port=args.port, limit=args.limit)
    elif args.command in ("ask", "link", "index", "api"):
        from tasks.serving.commands import run

        run(args)
    elif args.command == "ui":
        import subprocess

        from flows.common import load_project_params, project_root
        from flows.serve import mlflow_ui_command, server_env
        from tasks import tracking

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
