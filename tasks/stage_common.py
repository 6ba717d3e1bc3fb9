"""Shared glue for stage modules: command-line parsing (params file + -S overrides), logging, JSON(L)
writing that never leaves a half-written file behind."""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from onegen_core.config import Params, load_params, parse_overrides


def stage_params(doc: str, argv: list[str] | None = None) -> Params:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key, e.g. -S train.epochs=2 (value parsed as YAML)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return load_params(args.params, parse_overrides(args.set))


def write_json(path: str | Path, obj: Any) -> None:
    _atomic(Path(path), json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    _atomic(Path(path), "".join(line + "\n" for line in lines))
    return len(lines)


def _atomic(path: Path, text: str) -> None:
    """Write to a temporary file and rename: an interrupted stage leaves the old file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
