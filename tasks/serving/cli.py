"""The options of `onegen ask`, `onegen link`, `onegen index add|info` and `onegen api`, beside the code
that runs them (tasks/serving/commands.py). flows/cli.py registers them with `add_commands`.

Only argparse here: `onegen --help` must stay fast, so nothing heavy is imported before a command runs.
"""
from __future__ import annotations

import argparse

# the subcommands this package adds to `onegen`; `commands.run(args)` runs any of them
COMMANDS = ("ask", "link", "index", "api")


def positive_int(text: str) -> int:
    """An option that counts something per pass: 1 or more (0 or -1 would silently mean something else)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_options(ap: argparse.ArgumentParser) -> None:
    """Where the checkpoint and its index come from (the same settings as the stages)."""
    ap.add_argument("--project-dir", default=".", help="the project whose params.yaml is read (default: here)")
    ap.add_argument("--profile", default=None, help="profile laid over params.yaml (profiles/<name>.yaml)")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key, e.g. -S serve.max_batch_size=4; repeatable")
    ap.add_argument("--checkpoint", default=None, help="checkpoint directory (default: params evaluate.checkpoint)")
    ap.add_argument("--index", default=None, help="LanceDB URI (default: params encode.uri)")


def add_ask(sub) -> None:
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
    ak.add_argument("--batch-size", type=positive_int, default=None, help="--json: questions per batch (default: serve.max_batch_size)")
    add_model_options(ak)


def add_link(sub) -> None:
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
    add_model_options(lk)


def add_index(sub) -> None:
    ix = sub.add_parser("index", help="add your own documents to the index, or describe it",
                        description="`index add PATH` encodes documents with the checkpoint into a LanceDB table; "
                                    "`index info` prints each table's rows, checkpoint and index type.")
    ixs = ix.add_subparsers(dest="index_command", required=True)
    add = ixs.add_parser("add", help="encode a JSONL file or a folder of .txt/.md files into the index",
                         description="PATH: JSONL with one {id, title, text} per line, or a folder of .txt/.md files "
                                     "cut into passages at blank lines (ids <file>:<n>). Resumable: documents already "
                                     "stored with the same content are skipped; a stored id with other content is "
                                     "refused unless --update. An ANN index (encode.ann_index_type, sized by encode.ann_*) is built at encode.ann_min_rows rows.")
    add.add_argument("path", help="a .jsonl file or a folder")
    add.add_argument("--table", default=None, help="table (default: params encode.table; encode.kb_table for entities)")
    add.add_argument("--granularity", choices=("sentence", "document"), default=None,
                     help="one [RD] per sentence or per passage (default: params encode.granularity; document for the entity table)")
    add.add_argument("--update", action="store_true", help="replace stored documents whose id is given with new content")
    add.add_argument("--ann-min-rows", type=int, default=None, help="build the ANN index at this many rows (default: params encode.ann_min_rows)")
    add.add_argument("--batch-size", type=positive_int, default=None, help="documents per forward pass (default: params encode.batch_size)")
    add.add_argument("--json", action="store_true", help="the counts as one JSON object")
    add_model_options(add)
    info = ixs.add_parser("info", help="rows, checkpoint and index type of each table",
                          description="Rows, documents, vector size, index type (IVF_RQ, IVF_PQ, IVF_HNSW_SQ or exact) and the checkpoint "
                                      "that encoded each table, checked against the configured checkpoint.")
    info.add_argument("--table", default=None, help="only this table (default: every table)")
    info.add_argument("--json", action="store_true", help="one JSON object")
    add_model_options(info)
    for name, what in (("check", "report unit ids stored more than once (exit 1 when a table is damaged)"),
                       ("repair", "keep one row of every unit id stored more than once, under the writer lock")):
        cmd = ixs.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
        cmd.add_argument("--table", default=None, help="only this table (default: every table)")
        cmd.add_argument("--json", action="store_true", help="one JSON object")
        add_model_options(cmd)


def add_api(sub) -> None:
    ap = sub.add_parser("api", help="HTTP API and web page over the trained model (FastAPI/uvicorn, 127.0.0.1)",
                        description="POST /v1/ask, POST /v1/link (\"stream\": true = server-sent events), GET /v1/health, "
                                    "GET /v1/info, and a web page at /. Concurrent requests are batched (serve.*). "
                                    "A bearer token is required when the environment variable serve.api_key_env "
                                    "names (ONEGEN_API_KEY) is set.")
    ap.add_argument("--host", default=None, help="address to bind (default: params serve.host, 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="port (default: params serve.port)")
    add_model_options(ap)


def add_commands(sub) -> None:
    """Add `ask`, `link`, `index add|info` and `api` (in that order) to `onegen`'s subparsers `sub`."""
    add_ask(sub)
    add_link(sub)
    add_index(sub)
    add_api(sub)
