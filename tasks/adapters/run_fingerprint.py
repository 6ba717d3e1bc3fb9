"""The identity of a training run: a fingerprint of every setting that changes training, of the data and
of the code a training step runs, and the Ray run name built from it.

Why: an interrupted `train` stage continues. Re-running it with the same settings gives the same Ray
run name, so Ray finds the run's latest checkpoint in `distributed.storage_path` and resumes from it
(`distributed.resume_from: auto`); any change to what is trained gives a new name, hence a fresh run.
The tiny initial backbone has its own, narrower key (`initial_backbone_key`): it is rebuilt only when
what it is built from changes.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from onegen_core.config import Params, flatten

# settings that change how a run is executed or recorded, not what it computes
VOLATILE_KEYS = ("distributed.resume_from", "distributed.trust_resume", "distributed.fail_at_step", "distributed.ray_address",
                 "distributed.placement_strategy",
                 "distributed.storage_path", "distributed.max_failures", "distributed.checkpoint_every",
                 "distributed.keep_checkpoints", "distributed.cpus_per_worker", "distributed.gpus_per_worker", "train.log_every",
                 "train_data.metrics_path", "train.output_dir")
TRAINING_SECTIONS = ("profile", "backbone", "tokenizer", "loss", "train", "train_data", "distributed", "lora")
# the project root: dvc.yaml and the code entries it lists are relative to it
ROOT = Path(__file__).resolve().parents[2]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (training files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def training_code(root: Path | None = None) -> list[str]:
    """The code a training run depends on: the `onegen_core/` and `tasks/` entries of the `train` stage's
    deps in dvc.yaml (declared there once; DVC re-runs the stage and this digest changes together)."""
    import yaml

    root = root or ROOT
    deps = (yaml.safe_load((root / "dvc.yaml").read_text()) or {})["stages"]["train"]["deps"]
    return [d for d in deps if isinstance(d, str) and d.startswith(("onegen_core", "tasks"))]


def code_digest(root: Path | None = None) -> str:
    """Digest of the code a training step runs: a finished run is reused only by the same code, while
    a resume after a crash or Ctrl-C still finds its run."""
    root = root or ROOT
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


def ray_run_name(fingerprint: str, resume_from: str, resume_dir: str) -> str:
    """The Ray run's name: `onegen-<fingerprint>`, so that the same settings find the same run;
    `distributed.resume_from: never` adds the time (always a fresh run), a chosen checkpoint
    (`resume_dir`, checked) adds that checkpoint's folder name."""
    name = f"onegen-{fingerprint}"
    if resume_from == "never":
        return name + time.strftime("-%Y%m%d-%H%M%S")
    if resume_dir:
        return name + "-from-" + Path(resume_from).name
    return name


def initial_backbone_key(p: Params) -> str:
    """What the tiny initial backbone depends on: its settings, the seed, and the texts its tokenizer is
    trained on — the training file and which of its examples are used (tasks, per-task cap)."""
    key = {k: v for k, v in flatten(p).items()
           if k.startswith(("backbone", "tokenizer", "train.seed", "train_data.tasks", "train_data.max_examples_"))}
    key["train_file"] = file_digest(p.train_data.train_file)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
