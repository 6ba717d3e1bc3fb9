"""What both flows share: the project and its DVC stages, params overrides, stage commands streamed to a
logger (secrets redacted), and the MLflow runs the flows open.

Nothing here imports Prefect, so the functions can be tested (and reused by the CLI) without a server.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import yaml

from tasks import tracking

# the pipeline, in order; a flow runs a prefix of it and fails if dvc.yaml lacks one of them
STAGES = ("prepare", "annotate", "label", "train", "encode", "evaluate")
# stages that call remote services (an LLM endpoint) get retries; deterministic stages none
STAGE_RETRIES = {"annotate": {"retries": 2, "retry_delay_seconds": 30}}

# environment variables whose values never reach a log, a params file or MLflow (plus the one named by
# params `annotate.api_key_env`)
SECRET_ENV_NAMES = ("OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PREFECT_API_KEY", "HF_TOKEN",
                    "HUGGING_FACE_HUB_TOKEN", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD")
REDACTED = "***"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class FlowError(RuntimeError):
    """A flow cannot start or a stage failed; the message says which and why."""


# ---------------------------------------------------------------- the project and its stages

def project_root(project_dir: str | os.PathLike | None = "") -> Path:
    """The DVC project the flow runs in: `project_dir`, or the current directory when empty."""
    root = Path(project_dir or os.getcwd()).expanduser().resolve()
    for name in ("dvc.yaml", "params.yaml"):
        if not (root / name).is_file():
            raise FlowError(f"{root} is not the onegen project: no {name} there (pass project_dir)")
    return root


def dvc_stages(root: Path) -> list[str]:
    data = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    return list((data.get("stages") or {}).keys())


def stage_chain(root: Path, until: str | None = None) -> list[str]:
    """STAGES up to and including `until` (all of them by default). A stage missing from dvc.yaml is an
    error, never a silent skip."""
    if until and until not in STAGES:
        raise FlowError(f"until={until!r}: not a pipeline stage (stages: {', '.join(STAGES)})")
    chain = list(STAGES[: STAGES.index(until) + 1]) if until else list(STAGES)
    defined = dvc_stages(root)
    missing = [s for s in chain if s not in defined]
    if missing:
        raise FlowError(f"stage(s) {', '.join(missing)} not defined in {root / 'dvc.yaml'} (it defines: "
                        f"{', '.join(defined) or 'nothing'}); the pipeline is {' -> '.join(STAGES)}: add the "
                        f"stage, or stop earlier with until=<last stage present>")
    return chain


def load_project_params(root: Path, overrides: dict[str, Any] | None = None):
    """params.yaml (+ its profile, + overrides) as typed `Params`; a bad key or value names itself."""
    from onegen_core.config import load_params

    return load_params(root / "params.yaml", overrides or {})


# ---------------------------------------------------------------- secrets

def secret_values(root: Path | None = None) -> list[str]:
    """Values of the secret environment variables set here (the annotator key named by params and the
    usual cloud credentials). Short values are ignored: redacting 'a' would shred every log line."""
    names = list(SECRET_ENV_NAMES)
    if root is not None:
        try:
            raw = yaml.safe_load((root / "params.yaml").read_text()) or {}
            env_name = (raw.get("annotate") or {}).get("api_key_env")
            if env_name:
                names.append(str(env_name))
        except (OSError, yaml.YAMLError):
            pass
    vals = {os.environ.get(n, "") for n in names}
    return sorted((v for v in vals if len(v) >= 6), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def refuse_secrets(values: Any, secrets: list[str], what: str) -> None:
    """Fail if a secret's value was passed where it would be recorded (flow parameters, params.yaml)."""
    blob = json.dumps(values, default=str)
    if any(s in blob for s in secrets):
        raise FlowError(f"{what} contain the value of a secret environment variable; secrets are read from the "
                        f"environment by the stage that needs them and must not be passed as parameters")


# ---------------------------------------------------------------- params overrides

def merged_overrides(overrides: dict[str, Any] | None, **named: Any) -> dict[str, Any]:
    """`overrides` plus the flows' named options (profile -> `profile`, experiment -> `mlflow.experiment`, …);
    a named option that contradicts the same key in `overrides` is an error."""
    out = dict(overrides or {})
    for key, value in named.items():
        if value is None:
            continue
        if key in out and out[key] != value:
            raise FlowError(f"{key} given twice with different values: {out[key]!r} and {value!r}")
        out[key] = value
    return out


def _yaml_rt():
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)  # the layout of params.yaml
    y.width = 4096
    y.representer.add_representer(float, _represent_float)
    return y


def _represent_float(representer, value: float):
    """Floats every YAML reader reads back as floats: 1e-05 is a string to YAML 1.1 (PyYAML, hence the
    stages' params loader), 1.0e-05 is a float to both 1.1 and 1.2."""
    if math.isnan(value):
        text = ".nan"
    elif math.isinf(value):
        text = ".inf" if value > 0 else "-.inf"
    else:
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{exp}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _keep_trailing_comment(parent, key: str, old: Any, new: Any) -> Any:
    """A block list or mapping carries the comment / blank line that follows it on its last item: move it
    to the replacement so the file keeps its layout."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(old, CommentedSeq) and old.fa.flow_style() and isinstance(new, (list, tuple)):
        new = CommentedSeq(new)  # [a, b] stays [a, b]
        new.fa.set_flow_style()
        return new
    if not isinstance(old, (CommentedSeq, CommentedMap)) or not len(old):
        return new
    last = len(old) - 1 if isinstance(old, CommentedSeq) else list(old.keys())[-1]
    entry = old.ca.items.get(last)
    tok = entry and (entry[0] if isinstance(old, CommentedSeq) else entry[2])
    if tok is None:
        return new
    if isinstance(new, (list, tuple)) and new:
        new = CommentedSeq(new)
        new.ca.items[len(new) - 1] = [tok, None, None, None]
    elif isinstance(new, dict) and new:
        new = CommentedMap(new)
        new.ca.items[list(new.keys())[-1]] = [None, None, tok, None]
    else:
        parent.ca.items[key] = [None, None, tok, None]
    return new


def write_overrides(root: Path, overrides: dict[str, Any], log: logging.Logger | Any,
                    backup: bool = True) -> dict[str, tuple[Any, Any]]:
    """Write `overrides` (dotted key -> value) into params.yaml so DVC sees them, as `dvc exp run -S` does:
    only existing keys, and the values are checked against the typed params before anything is written.
    Unlike `dvc exp run -S` (whose writer re-flows the whole file and emits floats such as 1e-05 that YAML
    1.1 readers take for strings), the file is updated with a comment- and layout-preserving round trip
    that changes only the overridden lines; the previous file is kept under .dvc/tmp/onegen/ (`backup`)
    and every change is logged. Returns {key: (old, new)} for the keys whose value changed."""
    from onegen_core.config import ConfigError, set_dotted

    if not overrides:
        return {}
    path = root / "params.yaml"
    try:
        load_project_params(root, overrides)
    except ConfigError as e:
        raise FlowError(f"overrides rejected, params.yaml untouched: {e}") from None
    text = path.read_text()
    y = _yaml_rt()
    doc = y.load(text)
    changes: dict[str, tuple[Any, Any]] = {}
    for key, value in overrides.items():
        node = doc
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not hasattr(node, "get") or part not in node:
                raise FlowError(f"override {key!r}: params.yaml has no key {'.'.join(parts[: i + 1])!r} "
                                f"(overrides change existing keys only), params.yaml untouched")
            if i < len(parts) - 1:
                node = node[part]
        old = node[parts[-1]]
        old_plain = json.loads(json.dumps(old, default=str))
        if old_plain != value:
            node[parts[-1]] = _keep_trailing_comment(node, parts[-1], old, value)
            changes[key] = (old_plain, value)
    if not changes:
        log.info("params.yaml already holds the %d override(s); not rewritten", len(overrides))
        return {}
    import io

    buf = io.StringIO()
    y.dump(doc, buf)
    expected = yaml.safe_load(text) or {}
    for key, value in overrides.items():
        set_dotted(expected, key, value)
    if yaml.safe_load(buf.getvalue()) != expected:  # never leave a file that does not say what we meant
        raise FlowError("writing the overrides would change params.yaml beyond the overridden keys; untouched")
    saved = ""
    if backup:
        backup_dir = root / ".dvc" / "tmp" / "onegen"
        backup_dir.mkdir(parents=True, exist_ok=True)
        saved = str(backup_dir / f"params.yaml.{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, saved)
    tmp = path.with_name(path.name + ".onegen-tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)
    for key, (old, new) in changes.items():
        log.warning("params.yaml: %s: %s -> %s", key, json.dumps(old), json.dumps(new))
    if backup:
        log.warning("wrote %d override(s) into params.yaml (DVC reads stage params from it; the outputs will "
                    "match it). Previous file: %s; `git diff params.yaml` shows the change", len(changes), saved)
    return changes


# ---------------------------------------------------------------- running DVC

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


def describe_status(status: dict[str, Any], limit: int = 400) -> str:
    """One line of what DVC found changed, e.g. `train: changed deps params.yaml (loss.lambda_r: modified)`."""
    parts = []
    for stage, changes in status.items():
        items = []
        for c in changes if isinstance(changes, list) else [changes]:
            if isinstance(c, str):
                items.append(c)
                continue
            for kind, what in c.items():
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
        parts.append(f"{stage}: " + ", ".join(items))
    text = " | ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def stream_command(cmd: list[str], cwd: Path, env: dict[str, str], log: logging.Logger | Any,
                   secrets: list[str], progress_every: float = 10.0, tail: int = 40) -> tuple[int, list[str]]:
    """Run `cmd`, sending each output line to `log` (ANSI colours stripped, secret values redacted).
    Progress bars redraw with a carriage return: such updates are logged at most every `progress_every`
    seconds (the bar's final state ends with a newline and is always logged). Returns (exit code, last
    lines). Interrupting the flow (Ctrl-C, cancellation) stops the command too."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    last: deque[str] = deque(maxlen=tail)
    buf = b""
    last_progress = 0.0

    def emit(raw: bytes, progress: bool) -> None:
        nonlocal last_progress
        line = redact(_ANSI.sub("", raw.decode("utf-8", "replace")).rstrip(), secrets)
        if not line.strip():
            return
        if progress:
            now = time.monotonic()
            if now - last_progress < progress_every:
                return
            last_progress = now
        last.append(line)
        log.info("%s", line)

    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            while True:
                i_n, i_r = buf.find(b"\n"), buf.find(b"\r")
                if i_n < 0 and i_r < 0:
                    break
                if i_r >= 0 and (i_n < 0 or i_r < i_n):
                    if buf[i_r + 1: i_r + 2] == b"\n":  # CRLF
                        emit(buf[:i_r], False)
                        buf = buf[i_r + 2:]
                    elif i_r + 1 >= len(buf):  # maybe the CR of a CRLF split across reads
                        break
                    else:
                        emit(buf[:i_r], True)
                        buf = buf[i_r + 1:]
                else:
                    emit(buf[:i_n], False)
                    buf = buf[i_n + 1:]
        if buf:
            emit(buf, False)
        return proc.wait(), list(last)
    finally:
        if proc.poll() is None:  # we are being interrupted: stop DVC (it stops the stage) and wait
            _stop(proc)


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the command's own session: DVC and the stage it runs
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


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


def git_head(root: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


# ---------------------------------------------------------------- MLflow

def open_run(root: Path, p, run_name: str, tags: dict[str, str], params: dict[str, Any]):
    """A new MLflow run in the params' experiment; returns (client, tracking uri, experiment id, run id)."""
    uri = tracking.tracking_uri(p.mlflow.tracking_uri, root)
    client = tracking.client_for(uri)
    exp_id = tracking.ensure_experiment(client, p.mlflow.experiment,
                                        tracking.artifact_location(p.mlflow.artifact_location, root))
    run = client.create_run(exp_id, run_name=run_name, tags={k: str(v)[:5000] for k, v in tags.items()})
    tracking.log_params(client, run.info.run_id, params)
    return client, uri, exp_id, run.info.run_id


def metric_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)[:250]


def numeric_leaves(obj: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in a nested JSON object, keyed by its '/'-joined path."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(numeric_leaves(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix] = float(obj)
    return out


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


TRAIN_HEADLINE = ("steps", "seconds", "lm_loss_first", "lm_loss_last", "retrieval_loss_first",
                  "retrieval_loss_last", "tokens_per_s")


def headline_metrics(root: Path, p) -> dict[str, float]:
    """The pipeline's headline figures from its metrics files: train.json (losses, validation Recall@1),
    encode.json (index size) and evaluate.json (every number in it) when present."""
    out: dict[str, float] = {}
    tr = read_json(root / p.train_data.metrics_path)
    if tr:
        for k in TRAIN_HEADLINE:
            if isinstance(tr.get(k), (int, float)) and math.isfinite(tr[k]):
                out[f"train/{k}"] = float(tr[k])
        for k, v in numeric_leaves(tr.get("val_after") or {}).items():
            out[f"train/val_{k}"] = v
    enc = read_json(root / p.encode.report_path)
    if enc:
        for k in ("documents", "units_in_index", "units_truncated", "seconds"):
            if isinstance(enc.get(k), (int, float)) and not isinstance(enc.get(k), bool):
                out[f"encode/{k}"] = float(enc[k])
    ev_path = getattr(getattr(p, "evaluate", None), "metrics_path", "metrics/evaluate.json")
    ev = read_json(root / ev_path)
    if ev:
        for k, v in list(numeric_leaves(ev).items())[:500]:
            out[f"evaluate/{k}"] = v
    return {metric_key(k): v for k, v in out.items()}

