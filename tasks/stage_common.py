"""Shared glue for stage modules: command-line parsing (params file + -S overrides), logging, JSON(L)
writing that never leaves a half-written file behind and never silently replaces data with nothing, and
the skip-rate gate every stage that skips records applies."""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from onegen_core.config import Params, load_params, parse_overrides

log = logging.getLogger("onegen.stage")


class EmptyOutputError(RuntimeError):
    """A stage produced no rows for an output that holds some: the old file is kept (a typo in a path or
    a params file that went missing must not wipe prepared data)."""


class SkipRateExceeded(RuntimeError):
    """More records of one input were skipped than the stage's max skip rate allows, or none came out."""


def check_skip_rate(what: str, n_in: int, n_skipped: int, max_rate: float, first: object = None) -> None:
    """The gate of a stage that skips bad records: fail when `what` lost more than `max_rate` of its
    `n_in` records, or when records went in and none came out (whatever the rate: an empty output from
    a non-empty input is a failure, never a result)."""
    if n_in and n_skipped >= n_in:
        raise SkipRateExceeded(f"{what}: all {n_in} records skipped, 0 records out; first: {first}")
    if n_in and n_skipped / n_in > max_rate:
        raise SkipRateExceeded(f"{what}: {n_skipped}/{n_in} records skipped (> {max_rate:.0%}); first: {first}")


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


def write_jsonl(path: str | Path, rows: Iterable[dict], allow_empty: bool = False) -> int:
    """Write `rows` as JSON Lines; return how many. Zero rows never replace a non-empty file silently:
    `EmptyOutputError` keeps the old file, unless the caller's settings ask for nothing
    (`allow_empty`), in which case the replacement is logged as a warning."""
    path = Path(path)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if not lines and path.is_file() and path.stat().st_size:
        old = sum(1 for line in path.open(encoding="utf-8", errors="replace") if line.strip())
        if not allow_empty:
            raise EmptyOutputError(f"{path}: 0 rows to write, the file holds {old}; kept it. Check the inputs "
                                   f"and params (a wrong --params file?); delete the file to accept an empty output")
        log.warning("%s: replacing %d rows with an empty output, as the settings ask", path, old)
    _atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def _atomic(path: Path, text: str) -> None:
    """Write to a temporary file and rename: an interrupted or failed write (a text that cannot be
    encoded, a full disk) leaves the old file, and no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except UnicodeEncodeError as e:  # a lone surrogate that got past a loader
        raise ValueError(f"{path}: text not encodable as UTF-8 at char {e.start} ({e.reason}); old file kept") from None
    finally:
        tmp.unlink(missing_ok=True)
