"""The pipeline's DVC stages from a flow: their order, which of them DVC finds changed, and running one.

DVC stays the source of truth: a flow asks `dvc status` whether a stage (or anything upstream) changed
and runs `dvc repro <stage>` only then, so `dvc.lock` and DVC's cache decide what is up to date.
(Not named `dvc.py`: Prefect puts this folder first on sys.path when it loads a flow by its file.)
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from flows.project import FlowError
from flows.redaction import redact, secret_values
from flows.subprocesses import stream_command

# the pipeline, in order; a flow runs a prefix of it and fails if dvc.yaml lacks one of them
STAGES = ("prepare", "annotate", "label", "train", "encode", "link_threshold", "evaluate")
# stages that call remote services (an LLM endpoint) get retries; deterministic stages none
STAGE_RETRIES = {"annotate": {"retries": 2, "retry_delay_seconds": 30}}


def defined_stages(root: Path) -> list[str]:
    """The stages `root`/dvc.yaml defines, in its order."""
    data = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    return list((data.get("stages") or {}).keys())


def stage_chain(root: Path, until: str | None = None) -> list[str]:
    """STAGES up to and including `until` (all of them by default). A stage missing from dvc.yaml is an
    error, never a silent skip."""
    if until and until not in STAGES:
        raise FlowError(f"until={until!r}: not a pipeline stage (stages: {', '.join(STAGES)})")
    chain = list(STAGES[: STAGES.index(until) + 1]) if until else list(STAGES)
    defined = defined_stages(root)
    missing = [s for s in chain if s not in defined]
    if missing:
        raise FlowError(f"stage(s) {', '.join(missing)} not defined in {root / 'dvc.yaml'} (it defines: "
                        f"{', '.join(defined) or 'nothing'}); the pipeline is {' -> '.join(STAGES)}: add the "
                        f"stage, or stop earlier with until=<last stage present>")
    return chain


def stage_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a DVC command: ours (secrets included: the stage reads them itself), with this
    interpreter's bin first on PATH (DVC runs `python -m tasks.…`) and the project on PYTHONPATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(root), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def dvc_cmd(*args: str) -> list[str]:
    """`dvc <args>` run by this interpreter (the DVC installed beside the flows)."""
    return [sys.executable, "-m", "dvc", *args]


def dvc_status(root: Path, stage: str, env: dict[str, str]) -> dict[str, Any]:
    """`dvc status --with-deps --json <stage>`: {} when the stage and its upstream are up to date."""
    done = subprocess.run(dvc_cmd("status", "--with-deps", "--json", stage), cwd=root, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise FlowError(f"`dvc status {stage}` failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    out = done.stdout.strip()
    start = out.find("{")
    try:
        return json.loads(out[start:]) if start >= 0 else {}
    except json.JSONDecodeError as e:
        raise FlowError(f"`dvc status {stage}` printed no JSON: {out[-500:]!r}") from e


def _describe_change(change: str | dict[str, Any]) -> list[str]:
    """One entry of a stage's `dvc status`, e.g. {"changed deps": {"params.yaml": {"loss.lambda_r":
    "modified"}}} -> ["changed deps params.yaml (loss.lambda_r: modified)"]."""
    if isinstance(change, str):
        return [change]
    items = []
    for kind, what in change.items():
        if isinstance(what, dict):
            sub = []
            for path, how in what.items():
                if isinstance(how, dict):
                    sub.append(f"{path} ({', '.join(f'{k}: {v}' for k, v in how.items())})")
                else:
                    sub.append(f"{path} {how}")
            items.append(f"{kind} " + "; ".join(sub))
        else:
            items.append(f"{kind} {what}")
    return items


def describe_status(status: dict[str, Any], limit: int = 400) -> str:
    """One line of what DVC found changed, e.g. `train: changed deps params.yaml (loss.lambda_r: modified)`."""
    parts = []
    for stage, changes in status.items():
        items = [item for c in (changes if isinstance(changes, list) else [changes]) for item in _describe_change(c)]
        parts.append(f"{stage}: " + ", ".join(items))
    text = " | ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_dvc_stage(root: Path, stage: str, log: logging.Logger | Any, extra_env: dict[str, str] | None = None) -> str:
    """'skipped' if DVC finds `stage` (and its upstream) up to date, else `dvc repro <stage>` with its output
    streamed to `log`, then 'ran'. A failed command raises FlowError with the last lines it printed."""
    secrets = secret_values(root)
    env = stage_env(root, extra_env)
    status = dvc_status(root, stage, env)
    if not status:
        log.info("stage %s: unchanged (dvc status: up to date), skipped", stage)
        return "skipped"
    log.info("stage %s: %s -> dvc repro %s", stage, redact(describe_status(status), secrets), stage)
    t0 = time.perf_counter()
    rc, last = stream_command(dvc_cmd("repro", stage), root, env, log, secrets)
    if rc != 0:
        raise FlowError(f"`dvc repro {stage}` failed (exit {rc}) in {root}; last lines:\n" + "\n".join(last[-15:]))
    log.info("stage %s: ran in %.1f s", stage, time.perf_counter() - t0)
    return "ran"
