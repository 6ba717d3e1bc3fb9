"""The driver side of Ray Train: where a run keeps its things, starting (or joining) Ray, and running the
`TorchTrainer` whose workers run `tasks.adapters.ray_worker.worker_loop`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from onegen_core.config import Params
from tasks.adapters.ray_session import connect, worker_env
from tasks.adapters.worker_settings import WorkerSettings

# Ray Train 2.60 without a dashboard logs this about once a second for the whole run (its placement-group
# cleaner polls the state API, which needs the dashboard); read once, when ray is imported
os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", "Failed to query Ray Train Controller actor state")


def run_dirs(storage_path: str, run_name: str) -> tuple[str | Path, Path]:
    """(Ray's storage for the run's checkpoints, the run's local bookkeeping folder: MLflow run id, step
    log, crash marker). A local storage path holds both; a remote one (`s3://…`) keeps the bookkeeping
    under `runs/<run_name>`."""
    remote = "://" in storage_path
    storage = storage_path if remote else Path(storage_path).resolve()
    run_dir = (Path("runs") / run_name if remote else Path(storage) / run_name).resolve()
    return storage, run_dir


def start_ray(p: Params) -> bool:
    """Join `distributed.ray_address` or start a local Ray; True if this process started it."""
    d = p.distributed
    return connect(d.ray_address, worker_env(d.threads_per_worker, d.use_gpu),
                   local_cpus=int(d.num_workers * d.cpus_per_worker + 0.999))


def fit(settings: WorkerSettings, storage: str | Path) -> Any:
    """Run the `TorchTrainer` (one worker per `distributed.num_workers`) under the run's name; returns
    Ray's `Result` (its `error`, its latest `checkpoint`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tasks.adapters.ray_worker import worker_loop

    d = settings.params.distributed
    resources = {"CPU": d.cpus_per_worker, **({"GPU": d.gpus_per_worker} if d.use_gpu else {})}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=settings.to_config(),
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu, resources_per_worker=resources,
                                     placement_strategy=d.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if d.use_gpu else "gloo"),
        run_config=RunConfig(
            name=settings.run_name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=d.keep_checkpoints),
        ),
    )
    return trainer.fit()


def train_on_ray(settings: WorkerSettings, storage: str | Path) -> Any:
    """`fit` inside a Ray session: the one joined, or one started here and shut down after."""
    started = start_ray(settings.params)
    try:
        return fit(settings, storage)
    finally:
        if started:
            import ray

            ray.shutdown()
