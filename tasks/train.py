"""The `train` stage (`python -m tasks.train`): OneGen fine-tuning under Ray Train + DeepSpeed,
tracked in MLflow.

The driver (this module) prepares what every worker starts from, opens the MLflow run, starts (or
joins) Ray, runs a `TorchTrainer` whose workers run `tasks.adapters.ray_worker.worker_loop`, and finally
copies the last checkpoint's Hugging Face weights to `train.output_dir`, logs them to the run and
registers them as a model version.

Interrupted runs continue: the Ray run is named after a fingerprint of every setting that changes
training (and of the data), so re-running the stage with the same settings finds the run's latest
checkpoint in `distributed.storage_path` and resumes from it (`distributed.resume_from: auto`).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from onegen_core.config import Params, flatten
from tasks.adapters import tracking
from tasks.adapters.deepspeed_config import check_compile_support, load_ds_config, resolved_ds_config, validate
from tasks.adapters.initial_backbone import prepare_init
from tasks.adapters.ray_train import run_dirs, train_on_ray
from tasks.adapters.run_fingerprint import ray_run_name, run_fingerprint
from tasks.adapters.train_checkpoint import chosen_resume_dir, publish_checkpoint
from tasks.adapters.train_mlflow import log_final_model, open_mlflow_run
from tasks.adapters.train_summary import read_history, summarise
from tasks.adapters.worker_settings import WorkerSettings
from tasks.stage_common import stage_params, write_json

log = logging.getLogger("onegen.train")


def check_training_file(path: str) -> None:
    """Before Ray starts: the training file exists and holds an example (an empty one used to fail 90 s
    later inside a worker)."""
    f = Path(path)
    if not f.is_file():
        raise FileNotFoundError(f"{path}: training file missing (train_data.train_file; run `dvc repro label`)")
    with f.open("rb") as fh:
        if not any(line.strip() for line in fh):
            raise ValueError(f"{path}: the training file holds no example (train_data.train_file); nothing to train")


def run(p: Params) -> dict[str, Any]:
    t_start = time.perf_counter()
    # checked first: nothing runs before the trust boundary says yes
    resume_dir = chosen_resume_dir(p)
    # before anything is built: a setting the DeepSpeed config cannot run fails first
    check_compile_support(load_ds_config(p.distributed.deepspeed_config), p)
    check_training_file(p.train_data.train_file)  # before Ray: an empty file used to fail 90 s in, in a worker
    run_name = ray_run_name(run_fingerprint(p), p.distributed.resume_from, resume_dir)
    storage, run_dir = run_dirs(p.distributed.storage_path, run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = worker_settings(p, run_name, run_dir, resume_dir)
    log.info("Ray run %s (storage %s), MLflow run %s at %s", run_name, storage, settings.mlflow_run_id,
             settings.tracking_uri)

    result = train_on_ray(settings, storage)
    uri, run_id = settings.tracking_uri, settings.mlflow_run_id
    if result.error:
        tracking.finish_run(tracking.client_for(uri), run_id, "FAILED")
        raise RuntimeError(f"training failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    with result.checkpoint.as_directory() as d:
        out = publish_checkpoint(Path(d), Path(p.train.output_dir))
    rows = read_history(Path(settings.history_path))
    summary = summarise(rows, p, run_name, run_id, uri, str(out), result.checkpoint.path)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    summary["model_version"] = log_final_model(p, uri, run_id, out)
    tracking.finish_run(tracking.client_for(uri), run_id, "FINISHED")
    write_json(p.train_data.metrics_path, summary)
    (out / "train_run.json").write_text(json.dumps({**summary, "params": flatten(p)}, indent=2, default=str))
    return summary


def worker_settings(p: Params, run_name: str, run_dir: Path, resume_dir: str) -> WorkerSettings:
    """Resolve what every worker must agree on: the initial checkpoint, the DeepSpeed config (its
    "auto" values need the backbone's hidden size) and the MLflow run."""
    from onegen_core.method.backbone import load_config

    init_dir = prepare_init(p)
    ds_config = resolved_ds_config(p, p.distributed.num_workers, load_config(init_dir).hidden_size)
    validate(ds_config, p.distributed.num_workers)
    uri = tracking.tracking_uri(p.mlflow.tracking_uri)
    return WorkerSettings(
        params=p,
        run_name=run_name,
        init_dir=init_dir,
        train_file=str(Path(p.train_data.train_file).resolve()),
        val_file=str(Path(p.train_data.val_file).resolve()),
        ds_config=ds_config,
        tracking_uri=uri,
        mlflow_run_id=open_mlflow_run(p, uri, run_name, run_dir),
        # rank 0's step log beside the run's checkpoints (a remote storage_path keeps it under runs/)
        history_path=str((run_dir / "history.jsonl").resolve()),
        fail_marker=str((run_dir / "failed-once").resolve()),
        resume_dir=resume_dir,
    )


def main(argv: list[str] | None = None) -> None:
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
