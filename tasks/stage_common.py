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
from onegen_core.data.atomic_write import write_text_atomic

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
    """The params a stage runs with: `--params` (default params.yaml) with its `-S KEY=VALUE` overrides;
    also sets up logging. `doc` (the stage's docstring) is its `--help`."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key, e.g. -S train.epochs=2 (value parsed as YAML)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return load_params(args.params, parse_overrides(args.set))


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON (what a stage reports), atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict], empty_because: str | None = None,
                allow_empty: bool = False) -> int:
    """Write `rows` as JSON Lines; return how many. Zero rows never replace a non-empty file silently:
    `EmptyOutputError` keeps the old file, naming the setting that gives the output no input
    (`empty_because`) when there is one; only with `allow_empty` (`prepare.allow_empty_outputs`, set by the
    user) is the replacement made, and logged as a warning."""
    path = Path(path)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if not lines and path.is_file() and path.stat().st_size:
        with path.open(encoding="utf-8", errors="replace") as fh:
            old = sum(1 for line in fh if line.strip())
        if empty_because is None:
            raise EmptyOutputError(f"{path}: 0 rows to write, the file holds {old}; kept it. Check the inputs "
                                   f"and params (a wrong --params file?); delete the file to accept an empty output")
        if not allow_empty:
            raise EmptyOutputError(f"{path}: {empty_because}, so this output would go from {old} rows to none; "
                                   f"kept it. Set prepare.allow_empty_outputs=true to accept an empty output")
        log.warning("%s: replacing %d rows with an empty output (%s; prepare.allow_empty_outputs)", path, old,
                    empty_because)
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def machine_record() -> dict[str, Any]:
    """What ran a stage, for the figures it writes: the CPU model, its cores, the accelerator if any, and
    the torch build. A figure of this project depends on the machine (training speed varies by a fifth
    between runs of one recipe here), so a results table names the machine from this record."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:  # not Linux
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
