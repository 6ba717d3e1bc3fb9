"""The `onegen ask`, `onegen link`, `onegen index add|info` and `onegen api` commands (their options are
defined in tasks/serving/cli.py; flows/cli.py parses them and calls `run(args)`; heavy imports happen
here, after parsing).

Settings come from the project's params.yaml (+ `--profile`, `-S key=value`): the checkpoint is
`evaluate.checkpoint`, the index `encode.uri` with tables `encode.table` (passages) and `encode.kb_table`
(entities); `--checkpoint` and `--index` override them. Relative paths resolve against the project.
Errors a user can fix (no checkpoint, an index from another checkpoint, a bad document) end the command
with one line naming what is wrong, and exit status 1.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("onegen.serve")


# ------------------------------------------------------------------------------------------ settings

def _params(args: argparse.Namespace):
    """(project root, params): params.yaml of --project-dir, its profile and the -S overrides."""
    from onegen_core.config import load_params, parse_overrides

    root = Path(args.project_dir or ".").expanduser().resolve()
    if not (root / "params.yaml").is_file():
        raise SystemExit(f"onegen {args.command}: {root} has no params.yaml (run from the project or pass --project-dir)")
    overrides = parse_overrides(args.set)
    if args.profile:
        overrides["profile"] = args.profile
    p = load_params(root / "params.yaml", overrides)
    if p.serve.threads:
        import torch

        torch.set_num_threads(p.serve.threads)
    return root, p


def _resolve(root: Path, path: str) -> str:
    """A params path as the stages read it (relative to the project); URIs (s3://…) unchanged."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str(root / path)


def _locations(args: argparse.Namespace, root: Path, p) -> tuple[str, str]:
    checkpoint = args.checkpoint or _resolve(root, p.evaluate.checkpoint)
    index = args.index or _resolve(root, p.encode.uri)
    return checkpoint, index


def _service(args: argparse.Namespace):
    from tasks.serving.service import ModelService

    root, p = _params(args)
    checkpoint, index = _locations(args, root, p)
    return ModelService(p, checkpoint=checkpoint, index_uri=index)


def _json_line(obj: Any, out: TextIO) -> None:
    out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    out.flush()


# ------------------------------------------------------------------------------------------ ask

def _read_text(path: str, command: str) -> str:
    """A --file's text ('-' = stdin); bytes that are not UTF-8 are a one-line error naming file and line."""
    if path == "-":
        return sys.stdin.read()
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SystemExit(f"onegen {command}: {path}: line {line}: not UTF-8 text (byte {e.start}: "
                         f"{raw[e.start:e.start + 1]!r}); give a UTF-8 text file") from None


def _questions(args: argparse.Namespace) -> list[str]:
    if args.file:
        if args.file != "-" and not Path(args.file).is_file():
            raise SystemExit(f"onegen ask: {args.file}: no such file")
        text = _read_text(args.file, "ask")
        qs = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not qs:
            raise SystemExit(f"onegen ask: {args.file} holds no question (one per line)")
        return qs
    if not args.question:
        raise SystemExit("onegen ask: give a QUESTION or --file FILE")
    return [args.question]


class _TerminalAsk:
    """Prints one question's stream: the model's tokens as they come, each retrieval as a block."""

    def __init__(self, out: TextIO, width: int = 100) -> None:
        self.out, self.width = out, width
        self.at_line_start = True

    def __call__(self, ev: dict) -> None:
        if ev["type"] == "token":
            if ev["text"]:
                self.out.write(ev["text"])
                self.at_line_start = ev["text"].endswith("\n")
        elif ev["type"] == "retrieval":
            if not self.at_line_start:
                self.out.write("\n")
            self.out.write(f"  ↳ retrieval {ev['query'] + 1}:\n")
            if not ev["hits"]:
                self.out.write("      (nothing retrievable)\n")
            for h in ev["hits"]:
                text = h["text"] if len(h["text"]) <= self.width else h["text"][: self.width - 1] + "…"
                self.out.write(f"    {h['rank']:>2}. {h['score']:7.4f}  {h['title']}: {text}  [{h['id']}]\n")
            self.at_line_start = True
        self.out.flush()


def ask(args: argparse.Namespace, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call: the stream may be replaced (tests, redirection)
    from tasks.serving.service import CallbackChannel, QuietChannel

    questions = _questions(args)
    service = _service(args)
    opts = service.ask_options(args.max_tokens, args.max_retrievals, args.top_k, args.temperature, None, args.seed)
    items = [service.ask_input(q, opts, limit=None) for q in questions]
    if args.json:
        size = args.batch_size or service.params.serve.max_batch_size
        for i in range(0, len(items), size):  # batched: rows retrieve at different steps, one pass each
            for res in service.run_ask([(it, QuietChannel()) for it in items[i:i + size]]):
                _json_line(res, out)
        return
    for n, it in enumerate(items):  # one at a time, so each question's stream reads in order
        if n:
            out.write("\n")
        out.write(f"Q: {it.question}\n")
        printer = _TerminalAsk(out)
        (res,) = service.run_ask([(it, CallbackChannel(printer))])
        if not printer.at_line_start:
            out.write("\n")
        c = res["counts"]
        answer = res["answer"] if res["answer"] is not None else "(no <FINAL-ANSWER> closed)"
        out.write(f"answer: {answer}\n({res['finish_reason']}; {c['generated_tokens']} tokens generated, "
                  f"{c['retrievals']} retrievals, {c['pasted_tokens']} pasted)\n")
        out.flush()


# ------------------------------------------------------------------------------------------ link

def _texts(args: argparse.Namespace) -> list[tuple[Any, str, str, str]]:
    """(article id, title, text) per text: the argument, a text file (one text), or ELEVANT-style JSONL
    ({id, text, title?} per line: each line one article)."""
    from tasks.serving.corpus import CorpusError, check_plain_text

    if not args.file:
        if not args.text:
            raise SystemExit("onegen link: give a TEXT or --file FILE")
        return [(0, "", args.text, "TEXT")]
    path = Path(args.file)
    if args.file != "-" and not path.is_file():
        raise SystemExit(f"onegen link: {path}: no such file")
    raw = _read_text(args.file, "link")
    if path.suffix.lower() != ".jsonl":
        return [(0, "", raw, f"{path}")]
    out = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"onegen link: {path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise SystemExit(f"onegen link: {path}:{n}: field 'text': expected a string")
        if not rec["text"].strip():
            raise SystemExit(f"onegen link: {path}:{n}: field 'text': empty")
        try:  # what the service would refuse later without a line number: special tokens, lone surrogates
            check_plain_text(rec["text"], f"{path}:{n}: field 'text'")
        except CorpusError as e:
            raise SystemExit(f"onegen link: {e}") from None
        out.append((rec.get("id", n - 1), rec.get("title", "") or "", rec["text"], f"{path}:{n}: field 'text'"))
    return out


def _marked(text: str, mentions: list[dict]) -> str:
    """The text with each linked span as [span](entity id)."""
    parts, pos = [], 0
    for m in mentions:
        parts += [text[pos:m["start"]], f"[{text[m['start']:m['end']]}]({m['entity']['id'] if m['entity'] else '?'})"]
        pos = m["end"]
    return "".join(parts + [text[pos:]])


def link(args: argparse.Namespace, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call: the stream may be replaced (tests, redirection)
    from tasks.serving.service import InvalidRequest, QuietChannel, elevant_article

    texts = _texts(args)
    service = _service(args)
    opts = service.link_options(args.top_k, args.max_retrievals)
    items = []
    for art_id, title, text, where in texts:  # all checked before any is linked (the tokenizer's control tokens)
        try:
            items.append((art_id, title, text, service.link_input(text, opts, limit=None)))
        except InvalidRequest as e:
            raise SystemExit(f"onegen link: {where}: {e.message.removeprefix('text: ')}") from None
    for art_id, title, text, item in items:
        (res,) = service.run_link([(item, QuietChannel())])
        if args.json:
            art = elevant_article(res, art_id)
            art["title"] = title
            _json_line(art, out)
            continue
        out.write(_marked(text, res["mentions"]).strip() + "\n")
        for m in res["mentions"]:
            span = f"[{m['start']}, {m['end']})"
            if m["entity"]:
                e = m["entity"]
                target = f"{e['id']} {e['title']} ({e['score']:.3f})"
            elif m.get("abstained"):
                best = m["candidates"][0]
                target = f"NIL (nearest: {best['id']} {best['title']} {best['score']:.3f} < {service.nil_threshold:.3f})"
            else:
                target = "not linked (retrieval cap)"
            others = ", ".join(f"{c['id']} {c['title']} {c['score']:.3f}" for c in m["candidates"][1:])
            out.write(f"  {span:<12} {m['text']!r:<24} -> {target}" + (f"   candidates: {others}" if others else "")
                      + "\n")
        if not res["mentions"]:
            out.write("  (no mention marked)\n")
        if res["finish_reason"] != "eos":
            out.write(f"  (a window stopped early: {res['finish_reason']})\n")
        out.flush()


# ------------------------------------------------------------------------------------------ index

def index_add(args: argparse.Namespace, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call: the stream may be replaced (tests, redirection)
    from onegen_core.config import LossConfig
    from onegen_core.method.collator import OneGenCollator
    from onegen_core.method.control_tokens import control_tokens
    from onegen_core.method.model import OneGenModel
    from onegen_core.method.precision import resolve_inference_dtype
    from tasks.adapters.lance_index import AnnSettings
    from tasks.serving.corpus import add_documents, check_documents, read_documents
    from tasks.serving.service import load_model

    root, p = _params(args)
    checkpoint, uri = _locations(args, root, p)
    table = args.table or p.encode.table
    granularity = args.granularity or ("document" if table == p.encode.kb_table else p.encode.granularity)
    if table == p.encode.kb_table and granularity != "document":
        # an entity is one [RD]: per-sentence rows would give ids like `Q1#0` that no label names
        raise SystemExit(f"error: the entity table {table!r} takes whole documents, one [RD] an entity; "
                         f"--granularity {granularity} is refused")
    refused: list[str] = []
    docs = read_documents(args.path, granularity, refused)
    lm, tok, ck = load_model(checkpoint, resolve_inference_dtype(p.backbone.inference_dtype))
    check_documents(docs, control_tokens(tok), args.path)
    model = OneGenModel(lm, LossConfig()).eval()
    collator = OneGenCollator(tok, max_length=p.encode.max_doc_length, max_doc_length=p.encode.max_doc_length)
    report = add_documents(model, collator, docs, uri, table, checkpoint, ck, args.batch_size or p.encode.batch_size,
                           p.encode.ann_min_rows if args.ann_min_rows is None else args.ann_min_rows, args.update,
                           AnnSettings.from_config(p.encode))
    report["granularity"] = granularity
    report["links_refused"] = refused
    from tasks.adapters.index_contents import record_source
    from tasks.adapters.lance_index import LanceIndex
    from tasks.adapters.table_lock import writer_lock

    with writer_lock(uri, table):  # a read-modify-write of the table's metadata: one writer at a time
        record_source(LanceIndex(uri, table), str(args.path), report["documents"])
    if args.json:
        _json_line(report, out)
        return
    out.write(f"{uri}/{table}: {report['documents']} documents read ({granularity}); "
              f"{report['documents_new']} new, {report['documents_updated']} updated, "
              f"{report['documents_unchanged']} already there; {report['documents_encoded_now']} encoded now; "
              f"{report['units_in_index']} units in the table"
              f"{'; ANN index built' if report['ann_index'] else ''} ({report['seconds']} s)\n")
    if refused:
        out.write(f"refused {len(refused)} link(s) leading out of {args.path} (not read): "
                  f"{', '.join(refused[:5])}{' …' if len(refused) > 5 else ''}\n")
    if report["units_truncated"]:
        out.write(f"warning: {report['units_truncated']} units lost their [RD] to truncation at "
                  f"{p.encode.max_doc_length} tokens (raise encode.max_doc_length or split the documents)\n")


def index_check(args: argparse.Namespace, repair: bool = False, out: TextIO | None = None) -> None:
    """`onegen index check|repair`: each table's unit ids stored more than once; `repair` keeps one row of
    each, holding the writer lock. `check` exits 1 on a damaged table, so scripts can stop on it."""
    out = out or sys.stdout
    from tasks.adapters.lance_index import LanceIndex, table_names
    from tasks.adapters.table_lock import writer_lock

    root, p = _params(args)
    _, uri = _locations(args, root, p)
    command = f"onegen index {'repair' if repair else 'check'}"
    if "://" not in uri and not Path(uri).is_dir():
        raise SystemExit(f"{command}: {uri}: no index (run `dvc repro encode` or `onegen index add`)")
    names = [args.table] if args.table else table_names(uri)
    tables = []
    for name in names:
        with writer_lock(uri, name) if repair else contextlib.nullcontext():
            try:
                index = LanceIndex(uri, name)
            except (ValueError, RuntimeError) as e:
                raise SystemExit(f"{command}: {uri}/{name}: {e}") from None
            dup = index.duplicate_ids()
            removed = index.drop_duplicates() if repair and dup else 0
            tables.append({"table": name, "rows": len(index), "duplicate_ids": len(dup),
                           "duplicate_rows": sum(dup.values()) - len(dup), "rows_removed": removed,
                           "examples": list(dup)[:5]})
    damaged = [t for t in tables if t["duplicate_ids"] and not t["rows_removed"]]
    if args.json:
        _json_line({"uri": uri, "tables": tables, "ok": not damaged}, out)
    else:
        for t in tables:
            state = ("ok" if not t["duplicate_ids"] else
                     f"repaired: removed {t['rows_removed']} duplicate rows of {t['duplicate_ids']} unit ids"
                     if t["rows_removed"] else
                     f"DAMAGED: {t['duplicate_ids']} unit ids stored more than once (e.g. {t['examples'][0]!r}); "
                     "run `onegen index repair`")
            out.write(f"{uri}/{t['table']}: {t['rows']} rows; {state}\n")
    if damaged and not repair:
        raise SystemExit(1)


def index_info(args: argparse.Namespace, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call: the stream may be replaced (tests, redirection)
    from onegen_core.method.backbone import checkpoint_id
    from tasks.adapters.index_contents import contents
    from tasks.adapters.lance_index import LanceIndex, table_names

    root, p = _params(args)
    checkpoint, uri = _locations(args, root, p)
    if "://" not in uri and not Path(uri).is_dir():
        raise SystemExit(f"onegen index info: {uri}: no index (run `dvc repro encode` or `onegen index add`)")
    names = [args.table] if args.table else table_names(uri)
    served = checkpoint_id(checkpoint) if Path(checkpoint).is_dir() else None
    tables = []
    for name in names:
        try:
            info = contents(LanceIndex(uri, name))
        except (ValueError, RuntimeError) as e:  # missing table, or not a onegen table
            raise SystemExit(f"onegen index info: {uri}/{name}: {e}") from None
        info["matches_checkpoint"] = None if served is None else info["checkpoint_id"] == served
        tables.append(info)
    report = {"uri": uri, "checkpoint": checkpoint, "checkpoint_id": served, "tables": tables}
    if args.json:
        _json_line(report, out)
        return
    out.write(f"index {uri}; checkpoint {checkpoint} = {served or '(not found)'}\n")
    for t in tables:
        match = {True: "matches", False: "DOES NOT MATCH the checkpoint", None: "checkpoint unknown"}[t["matches_checkpoint"]]
        out.write(f"  {t['table']}: {t['rows']} rows ({t['documents']} documents), dim {t['dim']}, "
                  f"{t['index_type']}; encoded by {t['checkpoint_id']} ({match})\n")
        src = t["sources"]
        out.write("    sources: " + ("unknown (not recorded when the table was written)" if src is None else
                                     "; ".join(f"{e['source']} ({e.get('by') or str(e['documents']) + ' documents'})"
                                               for e in src) or "none") + "\n")
        ti = t["titles"]
        out.write(f"    titles: {ti['distinct']} distinct" + (f", most frequent: {', '.join(ti['sample'])}"
                                                              if ti["sample"] else "") + "\n")
    if not tables:
        out.write("  (no tables)\n")


# ------------------------------------------------------------------------------------------ api

def api(args: argparse.Namespace) -> None:
    import uvicorn

    from tasks.serving.app import bind_warning, create_app
    from tasks.serving.http_limits import server_config
    from tasks.serving.service import ModelService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    root, p = _params(args)
    checkpoint, index = _locations(args, root, p)
    host = args.host or p.serve.host
    port = p.serve.port if args.port is None else args.port
    key = os.environ.get(p.serve.api_key_env, "") if p.serve.api_key_env else ""
    warning = bind_warning(host, port, bool(key), p.serve.api_key_env)
    if warning:
        print(f"onegen api: WARNING: {warning}", file=sys.stderr, flush=True)
    service = ModelService(p, checkpoint=checkpoint, index_uri=index)
    app = create_app(service, p.serve, api_key=key or None)
    config = server_config(app, host, port, log_level="info", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    print(f"onegen api: http://{host}:{port}/ (web page), /v1/ask, /v1/link, /v1/health, /v1/info, /docs; "
          f"auth {'on (' + p.serve.api_key_env + ')' if key else 'off'}", file=sys.stderr, flush=True)
    server.run()


def run(args: argparse.Namespace) -> None:
    """Dispatch a parsed `onegen ask|link|index|api` command; user-fixable errors end it in one line."""
    from onegen_core.inference.index import IndexMismatchError
    from tasks.serving.corpus import CorpusError
    from tasks.serving.service import InvalidRequest

    try:
        if args.command == "ask":
            ask(args)
        elif args.command == "link":
            link(args)
        elif args.command == "index" and args.index_command == "add":
            index_add(args)
        elif args.command == "index" and args.index_command in ("check", "repair"):
            index_check(args, repair=args.index_command == "repair")
        elif args.command == "index":
            index_info(args)
        elif args.command == "api":
            api(args)
    except (IndexMismatchError, CorpusError, FileNotFoundError) as e:
        raise SystemExit(f"onegen {args.command}: {e}") from None
    except InvalidRequest as e:
        raise SystemExit(f"onegen {args.command}: {e.message}") from None
