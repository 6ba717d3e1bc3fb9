"""The `train` stage (`python -m tasks.train`): OneGen fine-tuning under Ray Train + DeepSpeed,
tracked in MLflow.

The driver (this module) prepares what every worker starts from, opens the MLflow run, starts (or
joins) Ray, runs a `TorchTrainer` whose workers run `tasks.ray_worker.worker_loop`, and finally
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
import time
from pathlib import Path
from typing import Any

from onegen_core.config import Params, flatten, to_dict

log = logging.getLogger("onegen.train")
# Ray Train 2.60 without a dashboard logs this about once a second for the whole run (its placement-group
# cleaner polls the state API, which needs the dashboard); read once, when ray is imported
os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", "Failed to query Ray Train Controller actor state")

# settings that change how a run is executed or recorded, not what it computes
VOLATILE_KEYS = ("distributed.resume_from", "distributed.trust_resume", "distributed.fail_at_step", "distributed.ray_address",
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


def training_code(root: Path | None = None) -> list[str]:
    """The code a training run depends on: the `onegen_core/` and `tasks/` entries of the `train` stage's
    deps in dvc.yaml (declared there once; DVC re-runs the stage and this digest changes together)."""
    import yaml

    root = root or Path(__file__).resolve().parents[1]
    deps = (yaml.safe_load((root / "dvc.yaml").read_text()) or {})["stages"]["train"]["deps"]
    return [d for d in deps if isinstance(d, str) and d.startswith(("onegen_core", "tasks"))]


def code_digest() -> str:
    """Digest of the code a training step runs: a finished run is reused only by the same code, while
    a resume after a crash or Ctrl-C still finds its run."""
    root = Path(__file__).resolve().parents[1]
    files = [f for entry in training_code(root)
             for f in ((root / entry).rglob("*.py") if (root / entry).is_dir() else [root / entry])]
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
           if k.startswith(("backbone", "tokenizer", "train.seed", "train_data.tasks", "train_data.max_examples_"))}
    key["train_file"] = file_digest(p.train_data.train_file)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def prepare_init(p: Params, fingerprint: str) -> str:
    """The checkpoint every worker loads. Tiny backbone: build it once here (BPE trained on the
    training texts, weights seeded) and save it, so all ranks and every resume start identical.
    Pretrained backbone: its own name/path (each rank adds the OneGen tokens the same way)."""
    from onegen_core.method.backbone import build_backbone, read_meta, resolve_backbone_name, save_checkpoint

    if not p.backbone.is_tiny():
        # every rank loads the named weights itself; the stage's `init_dir` output records which ones
        # (DVC declares the folder, so it exists for either kind of backbone)
        name = resolve_backbone_name(p.backbone.name)
        out = Path(p.train_data.init_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "pretrained.json").write_text(json.dumps({"backbone": p.backbone.name, "resolved": name}, indent=2) + "\n")
        return name
    from onegen_core.training.dataset import load_examples, tokenizer_texts

    out = Path(p.train_data.init_dir)
    init_key = initial_backbone_key(p)
    if out.is_dir() and read_meta(out).get("init_key") == init_key:
        log.info("initial backbone %s is current (%s)", out, init_key)
        return str(out.resolve())
    examples = load_examples(p.train_data.train_file, p.train_data.tasks, p.train_data.caps())
    lm, tokenizer, _, meta = build_backbone(p.backbone, tokenizer_texts(examples, p.tokenizer.corpus),
                                            p.tokenizer.vocab_size, p.tokenizer.min_frequency, p.train.seed)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(lm, tokenizer, tmp, {**meta, "init_key": init_key})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log.info("built the initial tiny backbone in %s (%.2fM parameters)", out, sum(x.numel() for x in lm.parameters()) / 1e6)
    return str(out.resolve())


def open_mlflow_run(p: Params, uri: str, run_name: str, run_dir: Path) -> str:
    """The run's MLflow run id: the one recorded for this Ray run (a resume continues it) or a new run
    with every resolved param, the git commit and the DVC data hashes."""
    from tasks import tracking

    client = tracking.client_for(uri)
    exp_id = tracking.ensure_experiment(client, p.mlflow.experiment, tracking.artifact_location(p.mlflow.artifact_location))
    id_file = run_dir / "mlflow_run_id"
    if id_file.is_file():
        run_id = id_file.read_text().strip()
        if tracking.continue_run(client, run_id):
            log.info("continuing MLflow run %s", run_id)
            return run_id
        log.warning("MLflow run %s of %s is gone; opening a new one", run_id, run_name)
    tags = {"onegen.ray_run": run_name, "host": socket.gethostname(), **tracking.git_state(), **tracking.dvc_hashes(),
            "data.train_file.sha256": file_digest(p.train_data.train_file),
            "data.val_file.sha256": file_digest(p.train_data.val_file)}
    params = {k: str(v) for k, v in flatten(p).items() if not k.startswith(VOLATILE_KEYS)}
    run_id = tracking.new_run(client, exp_id, run_name, tags, params)
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id)
    return run_id


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

    from tasks.ray_worker import worker_loop

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
    from tasks.deepspeed_config import check_compile_support, load_ds_config, resolved_ds_config, validate

    resume = p.distributed.resume_from
    resume_dir = ""
    if resume not in ("auto", "never"):  # checked first: nothing runs before the trust boundary says yes
        if not Path(resume).is_dir():
            raise FileNotFoundError(f"distributed.resume_from={resume}: no such checkpoint directory")
        resume_dir = str(Path(resume).resolve())
        from tasks.ray_worker import check_resume_trust

        check_resume_trust(resume_dir, p.distributed.storage_path, p.distributed.trust_resume)
    # before anything is built: a setting the DeepSpeed config cannot run fails first
    check_compile_support(load_ds_config(p.distributed.deepspeed_config), p)
    fingerprint = run_fingerprint(p)
    run_name = f"onegen-{fingerprint}"
    if resume == "never":
        run_name += time.strftime("-%Y%m%d-%H%M%S")
    elif resume_dir:
        run_name += "-from-" + Path(resume).name
    remote = "://" in p.distributed.storage_path
    storage = p.distributed.storage_path if remote else Path(p.distributed.storage_path).resolve()
    # local bookkeeping of the run (MLflow run id, step log, crash marker)
    run_dir = (Path("runs") / run_name if remote else Path(storage) / run_name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)

    init_dir = prepare_init(p, fingerprint)
    from onegen_core.method.backbone import load_config

    hidden = load_config(init_dir).hidden_size
    ds_config = resolved_ds_config(p, p.distributed.num_workers, hidden)
    validate(ds_config, p.distributed.num_workers)

    from tasks import tracking

    tracking_uri = tracking.tracking_uri(p.mlflow.tracking_uri)
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
        tracking.finish_run(tracking.client_for(tracking_uri), run_id, "FAILED")
        raise RuntimeError(f"training failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    with result.checkpoint.as_directory() as d:
        out = publish_checkpoint(Path(d) / "hf", Path(p.train.output_dir))
    rows = read_history(history)
    summary = summarise(rows, p, run_name, run_id, tracking_uri, str(out), result.checkpoint.path)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    summary["model_version"] = log_final_model(p, tracking_uri, run_id, out)
    tracking.finish_run(tracking.client_for(tracking_uri), run_id, "FINISHED")
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
    from onegen_core.method.backbone import checkpoint_id
    from tasks import tracking

    client = tracking.client_for(tracking_uri)
    client.log_artifacts(run_id, str(ckpt), artifact_path="checkpoint")
    if not p.mlflow.registered_model:
        return ""
    return tracking.register_model(client, p.mlflow.registered_model, run_id, "checkpoint",
                                   {"checkpoint_id": checkpoint_id(ckpt)})


def _under_project(path: str) -> str:
    """A path inside the project as relative to it (metrics files are committed; this machine's
    absolute paths mean nothing elsewhere); a path elsewhere (shared storage, s3://) as given."""
    if "://" in path or not os.path.isabs(path):
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def summarise(rows: list[dict], p: Params, run_name: str, run_id: str, tracking_uri: str, out: str,
              ray_checkpoint: str) -> dict[str, Any]:
    from tasks import tracking

    steps = [r for r in rows if r["step"] > 0 and "loss" in r]
    vals = [r for r in rows if "val/recall_at_1" in r]
    window = max(1, len(steps) // 10)

    def mean(key: str, part: list[dict]) -> float:
        xs = [r[key] for r in part if key in r and r[key] == r[key]]
        return sum(xs) / len(xs) if xs else float("nan")

    return {
        "ray_run": run_name,
        "mlflow_run_id": run_id,
        "mlflow_tracking_uri": tracking.portable_uri(tracking_uri),  # relative to the project, as params give it
        "mlflow_experiment": p.mlflow.experiment,
        "checkpoint": out,
        "ray_checkpoint": _under_project(ray_checkpoint),
        "workers": p.distributed.num_workers,
        "steps": len(steps),
        "lm_loss_first": mean("lm_loss", steps[:window]),
        "lm_loss_last": mean("lm_loss", steps[-window:]),
        "retrieval_loss_first": mean("retrieval_loss", steps[:window]),
        "retrieval_loss_last": mean("retrieval_loss", steps[-window:]),
        "tokens_per_s": mean("tokens_per_s", steps[1:] or steps),
        # of the negatives drawn, the share from the query's own example (loss.own_negatives_first)
        "own_negative_share": mean("own_negative_share", steps),
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
