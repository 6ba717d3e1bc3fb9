"""What the training driver hands every Ray Train worker: one typed, frozen record.

The driver (`tasks.train`) resolves everything a worker must agree on before Ray starts (the params,
the initial checkpoint, the DeepSpeed config with its "auto" values filled, the MLflow run, where rank 0
logs), so that no rank resolves anything on its own and every rank and every restart of the group sees
the same values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onegen_core.config import Params

# Ray Train's `train_loop_config` must be a dict. It is pickled (cloudpickle) to every worker, and this
# class lives in an importable module, so the record crosses as itself under one key: the worker reads
# typed fields, with no per-key conversion that could drift from the driver's side. (Ray's run-state
# export only shows it as a string, which nothing reads back.)
CONFIG_KEY = "settings"


@dataclass(frozen=True)
class WorkerSettings:
    params: Params                # the resolved params (the stage's, overrides and profile applied)
    run_name: str                 # the Ray run name; recorded in every checkpoint's state and weights
    init_dir: str                 # what every rank loads: the initial checkpoint or a pretrained name
    train_file: str               # absolute: a worker's working directory is not the driver's
    val_file: str                 # absolute, as above
    ds_config: dict[str, Any]     # DeepSpeed's own config format, "auto" values filled and validated
    tracking_uri: str             # the MLflow store rank 0 logs step metrics to
    mlflow_run_id: str            # the MLflow run the driver opened (or continues)
    history_path: str             # rank 0's step log (JSON Lines), read back by the driver's summary
    fail_marker: str              # `distributed.fail_at_step` writes it: a run crashes once, not on every restart
    resume_dir: str = ""          # a checkpoint chosen by `distributed.resume_from` ("" = Ray's own latest)

    def to_config(self) -> dict[str, Any]:
        """The `train_loop_config` dict Ray hands each worker."""
        return {CONFIG_KEY: self}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> WorkerSettings:
        """The settings back from a worker's `train_loop_config`."""
        settings = config[CONFIG_KEY]
        if not isinstance(settings, cls):
            raise TypeError(f"train_loop_config[{CONFIG_KEY!r}] is a {type(settings).__name__}, not {cls.__name__}")
        return settings
