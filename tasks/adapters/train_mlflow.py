"""The MLflow run of a training run: opened (or continued) by the driver before Ray starts, given the
final model at the end. Rank 0 logs the step metrics into it (`tracking.StepLogger`); the generic
MLflow plumbing is `tasks.adapters.tracking`.
"""
from __future__ import annotations

import logging
import socket
from pathlib import Path

from onegen_core.config import Params, flatten
from tasks.adapters.run_fingerprint import VOLATILE_KEYS, file_digest

log = logging.getLogger("onegen.train")


def open_mlflow_run(p: Params, uri: str, run_name: str, run_dir: Path) -> str:
    """The run's MLflow run id: the one recorded for this Ray run (a resume continues it) or a new run
    with every resolved param, the git commit and the DVC data hashes."""
    from tasks.adapters import tracking

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


def log_final_model(p: Params, tracking_uri: str, run_id: str, ckpt: Path) -> str:
    """Log the checkpoint as run artifacts and register it as a model version; returns the version."""
    if not p.mlflow.log_checkpoint:
        return ""
    from onegen_core.method.backbone import checkpoint_id
    from tasks.adapters import tracking

    client = tracking.client_for(tracking_uri)
    client.log_artifacts(run_id, str(ckpt), artifact_path="checkpoint")
    if not p.mlflow.registered_model:
        return ""
    return tracking.register_model(client, p.mlflow.registered_model, run_id, "checkpoint",
                                   {"checkpoint_id": checkpoint_id(ckpt)})
