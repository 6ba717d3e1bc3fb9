"""The `train` stage (`python -m tasks.train`): OneGen fine-tuning under Ray Train + DeepSpeed,
tracked in MLflow.

The driver (this module) prepares what every worker starts from, opens the MLflow run, starts (or
joins) Ray, runs a `TorchTrainer` whose workers run `tasks.train_worker.worker_loop`, and finally
copies the last checkpoint's Hugging Face weights to `train.output_dir`, logs them to the run and
registers them as a model version.

Interrupted runs continue: the Ray run is named after a fingerprint of every setting that changes
training (and of the data), so re-running the stage with the same settings finds the run's latest
checkpoint in `distributed.storage_path` and resumes from it (`distributed.resume_from: auto`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from onegen_core.config import Params, flatten, to_dict

log = logging.getLogger("onegen.train")

# settings that change how a run is executed or recorded, not what it computes
VOLATILE_KEYS = ("distributed.resume_from", "distributed.fail_at_step", "distributed.ray_address",
                 "distributed.storage_path", "distributed.max_failures", "distributed.checkpoint_every",
                 "distributed.keep_checkpoints", "distributed.cpus_per_worker", "distributed.gpus_per_worker", "train.log_every",
                 "train_data.metrics_path", "train.output_dir")
TRAINING_SECTIONS = ("profile", "backbone", "tokenizer", "loss", "train", "train_data", "distributed", "lora")


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# The core modules a training step runs (dvc.yaml's `train` deps list the same). config.py is left out:
# the resolved params are fingerprinted themselves, and adding a section for another stage must not
# invalidate a finished training run. Inference/evaluation modules are not training code.
TRAINING_CODE = ("onegen_core/__init__.py", "onegen_core/backbone.py", "onegen_core/collator.py",
                 "onegen_core/encoding.py", "onegen_core/evaluation.py", "onegen_core/lora.py", "onegen_core/losses.py",
                 "onegen_core/model.py", "onegen_core/pairs.py", "onegen_core/retrieval_eval.py",
                 "onegen_core/schedule.py", "onegen_core/segments.py", "onegen_core/tokens.py",
                 "onegen_core/train_loop.py", "onegen_core/reconstruct", "onegen_core/data", "tasks/train_worker.py")


def code_digest() -> str:
    """Digest of the code a training step runs (TRAINING_CODE): a finished run is reused only by the
    same code, while a resume after a crash or Ctrl-C still finds its run."""
    root = Path(__file__).resolve().parents[1]
    files = [f for entry in TRAINING_CODE for f in ((root / entry).rglob("*.py") if (root / entry).is_dir() else [root / entry])]
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def run_fingerprint(p: Params) -> str:
    """Digest of the settings that change training, the training data's content and the code."""
    flat = {k: v for k, v in flatten(p).items()
            if k.split(".")[0] in TRAINING_SECTIONS and not k.startswith(VOLATILE_KEYS) and not k.startswith("mlflow")}
    files = {f: file_digest(f) for f in (p.train_data.train_file, p.train_data.val_file, *p.tokenizer.corpus)}
    blob = json.dumps({"params": flat, "files": files, "code": code_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def initial_backbone_key(p: Params) -> str:
    """What the tiny initial backbone depends on: its settings, the seed, and the texts its tokenizer is
    trained on — the training file and which of its examples are used (tasks, per-task cap)."""
    key = {k: v for k, v in flatten(p).items()
           if k.startswith(("backbone", "tokenizer", "train.seed", "train_data.tasks", "train_data.max_examples_per_task"))}
    key["train_file"] = file_digest(p.train_data.train_file)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def prepare_init(p: Params, fingerprint: str) -> str:
    """The checkpoint every worker loads. Tiny backbone: build it once here (BPE trained on the
    training texts, weights seeded) and save it, so all ranks and every resume start identical.
    Pretrained backbone: its own name/path (each rank adds the OneGen tokens the same way)."""
    from onegen_core.backbone import build_backbone, read_meta, resolve_backbone_name, save_checkpoint

    if not p.backbone.is_tiny():
        return resolve_backbone_name(p.backbone.name)
    from tasks.train_core import corpus_texts
    from tasks.train_data import load_examples

    out = Path(p.train_data.init_dir)
    init_key = initial_backbone_key(p)
    if out.is_dir() and read_meta(out).get("init_key") == init_key:
        log.info("initial backbone %s is current (%s)", out, init_key)
        return str(out.resolve())
    examples = load_examples(p.train_data.train_file, p.train_data.tasks, p.train_data.max_examples_per_task)
    lm, tokenizer, _, meta = build_backbone(p.backbone, corpus_texts(examples, p.tokenizer.corpus),
                                            p.tokenizer.vocab_size, p.tokenizer.min_frequency, p.train.seed)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(lm, tokenizer, tmp, {**meta, "init_key": init_key})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log.info("built the initial tiny backbone in %s (%.2fM parameters)", out, sum(x.numel() for x in lm.parameters()) / 1e6)
    return str(out.resolve())


def resolve_tracking_uri(uri: str) -> str:
    """sqlite URIs with a relative path resolve against the current directory (Ray workers run
    elsewhere); a bare path becomes a sqlite store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:
        return "sqlite:///" + str(Path(uri).resolve())
    return uri


def git_state() -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return {"git.commit": commit, "git.dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.CalledProcessError):
        return {"git.commit": "unknown"}


def dvc_hashes(lock: str | Path = "dvc.lock") -> dict[str, str]:
    """md5 of every output DVC recorded for the upstream stages: the data lineage of this run."""
    import yaml

    path = Path(lock)
    if not path.is_file():
        return {}
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    out = {}
    for name in ("prepare", "annotate", "label"):
        for o in stages.get(name, {}).get("outs", []) or []:
            if "md5" in o:
                out[f"dvc.{o['path']}"] = o["md5"]
    return out


def open_mlflow_run(p: Params, tracking_uri: str, run_name: str, run_dir: Path) -> str:
    """The run's MLflow run id: the one recorded for this Ray run (a resume continues it) or a new
    run with every resolved param, the git commit and the DVC data hashes.

    A caller (the Prefect flows) may pass ONEGEN_MLFLOW_PARENT_RUN_ID, which nests the run under that run
    (tag `mlflow.parentRunId`; a continued run moves under the caller that continues it), and
    ONEGEN_MLFLOW_TAGS, a JSON object of extra tags (set on new and continued runs)."""
    import re

    import mlflow
    from mlflow import MlflowClient

    from tasks.stage_common import mlflow_env_tags

    extra = mlflow_env_tags()
    parent = os.environ.get("ONEGEN_MLFLOW_PARENT_RUN_ID", "").strip()
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(p.mlflow.experiment)
    if exp is None:
        # a URI (s3://, mlflow-artifacts:/, file:) as is, a path resolved here, '' = the server's default
        loc = p.mlflow.artifact_location or None
        if loc and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", loc):
            loc = Path(loc).resolve().as_uri()
        exp_id = client.create_experiment(p.mlflow.experiment, artifact_location=loc)
    else:
        exp_id = exp.experiment_id
    id_file = run_dir / "mlflow_run_id"
    if id_file.is_file():
        run_id = id_file.read_text().strip()
        try:
            prev = client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            for k, v in extra.items():
                client.set_tag(run_id, k, v)
            if parent and prev.data.tags.get("mlflow.parentRunId") != parent:
                client.set_tag(run_id, "mlflow.parentRunId", parent)  # the caller now running it
            log.info("continuing MLflow run %s", run_id)
            return run_id
        except mlflow.exceptions.MlflowException:
            log.warning("MLflow run %s of %s is gone; opening a new one", run_id, run_name)
    tags = {"onegen.ray_run": run_name, "host": socket.gethostname(), **git_state(), **dvc_hashes(),
            "data.train_file.sha256": file_digest(p.train_data.train_file),
            "data.val_file.sha256": file_digest(p.train_data.val_file), **extra}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    from mlflow.entities import Param

    params = [Param(k, str(v)[:6000]) for k, v in flatten(p).items() if not k.startswith(VOLATILE_KEYS)]
    for i in range(0, len(params), 100):  # the store takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run.info.run_id)
    return run.info.run_id


def start_ray(p: Params) -> bool:
    """Join `distributed.ray_address` or start a local Ray; True if this process started it."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray would otherwise write an auth token
    if ray.is_initialized():
        return False
    env = {"OMP_NUM_THREADS": str(p.distributed.threads_per_worker),
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                  str(Path.home() / ".cache" / "onegen" / "torch_extensions")),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TOKENIZERS_PARALLELISM": "false"}
    if not p.distributed.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed would otherwise probe for CUDA
    if p.distributed.ray_address:
        ray.init(address=p.distributed.ray_address, runtime_env={"env_vars": env})
    else:
        need = int(p.distributed.num_workers * p.distributed.cpus_per_worker + 0.999)
        ray.init(num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=True)
    return True


def fit(p: Params, config: dict[str, Any], run_name: str, storage: Path):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tasks.train_worker import worker_loop

    d = p.distributed
    resources = {"CPU": d.cpus_per_worker, **({"GPU": d.gpus_per_worker} if d.use_gpu else {})}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if d.use_gpu else "gloo"),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=d.keep_checkpoints),
        ),
    )
    return trainer.fit()


def read_history(path: Path) -> list[dict]:
    """Rank 0's step log; a resumed run re-logs the steps after its checkpoint: the last wins."""
    rows: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            rows[r["step"]] = {**rows.get(r["step"], {}), **r}
    return [rows[k] for k in sorted(rows)]


def run(p: Params) -> dict[str, Any]:
    t_start = time.perf_counter()
    from tasks.ds_config import resolved_ds_config, validate

    fingerprint = run_fingerprint(p)
    resume = p.distributed.resume_from
    run_name = f"onegen-{fingerprint}"
    resume_dir = ""
    if resume == "never":
        run_name += time.strftime("-%Y%m%d-%H%M%S")
    elif resume != "auto":
        if not Path(resume).is_dir():
            raise FileNotFoundError(f"distributed.resume_from={resume}: no such checkpoint directory")
        resume_dir = str(Path(resume).resolve())
        run_name += "-from-" + Path(resume).name
    remote = "://" in p.distributed.storage_path
    storage = p.distributed.storage_path if remote else Path(p.distributed.storage_path).resolve()
    # local bookkeeping of the run (MLflow run id, step log, crash marker)
    run_dir = (Path("runs") / run_name if remote else Path(storage) / run_name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)

    init_dir = prepare_init(p, fingerprint)
    from onegen_core.backbone import load_config

    hidden = load_config(init_dir).hidden_size
    ds_config = resolved_ds_config(p, p.distributed.num_workers, hidden)
    validate(ds_config, p.distributed.num_workers)

    tracking_uri = resolve_tracking_uri(p.mlflow.tracking_uri)
    run_id = open_mlflow_run(p, tracking_uri, run_name, run_dir)
    # rank 0's step log beside the run's checkpoints (a remote storage_path keeps it under runs/)
    history = run_dir / "history.jsonl"
    config = {
        "params": to_dict(p),
        "run_name": run_name,
        "init_dir": init_dir,
        "train_file": str(Path(p.train_data.train_file).resolve()),
        "val_file": str(Path(p.train_data.val_file).resolve()),
        "ds_config": ds_config,
        "tracking_uri": tracking_uri,
        "mlflow_run_id": run_id,
        "history_path": str(history.resolve()),
        "fail_marker": str((run_dir / "failed-once").resolve()),
        "resume_dir": resume_dir,
    }
    log.info("Ray run %s (storage %s), MLflow run %s at %s", run_name, storage, run_id, tracking_uri)
    started = start_ray(p)
    try:
        result = fit(p, config, run_name, storage)
    finally:
        if started:
            import ray

            ray.shutdown()
    if result.error:
        _finish_mlflow(tracking_uri, run_id, "FAILED")
        raise RuntimeError(f"training failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    with result.checkpoint.as_directory() as d:
        out = publish_checkpoint(Path(d) / "hf", Path(p.train.output_dir))
    rows = read_history(history)
    summary = summarise(rows, p, run_name, run_id, tracking_uri, str(out), result.checkpoint.path)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    summary["model_version"] = log_final_model(p, tracking_uri, run_id, out)
    _finish_mlflow(tracking_uri, run_id, "FINISHED")
    from tasks.stage_common import write_json

    write_json(p.train_data.metrics_path, summary)
    (out / "train_run.json").write_text(json.dumps({**summary, "params": flatten(p)}, indent=2, default=str))
    return summary


def publish_checkpoint(src: Path, dst: Path) -> Path:
    """Copy the final Hugging Face weights into place atomically (old or new, never half)."""
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: the final checkpoint has no Hugging Face weights")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return dst


def log_final_model(p: Params, tracking_uri: str, run_id: str, ckpt: Path) -> str:
    """Log the checkpoint as run artifacts and register it as a model version; returns the version."""
    if not p.mlflow.log_checkpoint:
        return ""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from onegen_core.backbone import checkpoint_id

    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_artifacts(run_id, str(ckpt), artifact_path="checkpoint")
    if not p.mlflow.registered_model:
        return ""
    try:
        client.create_registered_model(p.mlflow.registered_model)
    except MlflowException:
        pass  # already registered: add a version
    source = f"{client.get_run(run_id).info.artifact_uri}/checkpoint"
    mv = client.create_model_version(p.mlflow.registered_model, source=source, run_id=run_id,
                                     tags={"checkpoint_id": checkpoint_id(ckpt)})
    log.info("registered %s version %s (%s)", p.mlflow.registered_model, mv.version, source)
    return str(mv.version)


def _finish_mlflow(tracking_uri: str, run_id: str, status: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).set_terminated(run_id, status=status)


def summarise(rows: list[dict], p: Params, run_name: str, run_id: str, tracking_uri: str, out: str,
              ray_checkpoint: str) -> dict[str, Any]:
    steps = [r for r in rows if r["step"] > 0 and "loss" in r]
    vals = [r for r in rows if "val/recall_at_1" in r]
    window = max(1, len(steps) // 10)

    def mean(key: str, part: list[dict]) -> float:
        xs = [r[key] for r in part if key in r and r[key] == r[key]]
        return sum(xs) / len(xs) if xs else float("nan")

    return {
        "ray_run": run_name,
        "mlflow_run_id": run_id,
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_experiment": p.mlflow.experiment,
        "checkpoint": out,
        "ray_checkpoint": ray_checkpoint,
        "workers": p.distributed.num_workers,
        "steps": len(steps),
        "lm_loss_first": mean("lm_loss", steps[:window]),
        "lm_loss_last": mean("lm_loss", steps[-window:]),
        "retrieval_loss_first": mean("retrieval_loss", steps[:window]),
        "retrieval_loss_last": mean("retrieval_loss", steps[-window:]),
        "tokens_per_s": mean("tokens_per_s", steps[1:] or steps),
        "val_before": {k[4:]: v for k, v in vals[0].items() if k.startswith("val/")} if vals else {},
        "val_after": {k[4:]: v for k, v in vals[-1].items() if k.startswith("val/")} if vals else {},
    }


def main(argv: list[str] | None = None) -> None:
    from tasks.stage_common import stage_params

    p = stage_params(__doc__, argv)
    s = run(p)
    b, a = s["val_before"], s["val_after"]
    print(f"trained {s['steps']} steps on {s['workers']} workers in {s['seconds']:.0f} s; "
          f"Lg {s['lm_loss_first']:.3f} -> {s['lm_loss_last']:.3f}, Lr {s['retrieval_loss_first']:.3f} -> "
          f"{s['retrieval_loss_last']:.3f}; val Recall@1 {b.get('recall_at_1', float('nan')):.3f} -> "
          f"{a.get('recall_at_1', float('nan')):.3f}")
    print(f"checkpoint {s['checkpoint']}; MLflow run {s['mlflow_run_id']} ({s['mlflow_tracking_uri']}), "
          f"model version {s['model_version'] or '-'}")


if __name__ == "__main__":
    main()
