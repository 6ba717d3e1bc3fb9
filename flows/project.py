"""The DVC project a flow runs in: its root folder, its typed params and its git commit, and the one
error type the flows raise.

Nothing here imports Prefect, so the functions can be tested (and reused by the CLI) without a server.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any


class FlowError(RuntimeError):
    """A flow cannot start or a stage failed; the message says which and why."""


def project_root(project_dir: str | os.PathLike | None = "") -> Path:
    """The DVC project the flow runs in: `project_dir`, or the current directory when empty."""
    root = Path(project_dir or os.getcwd()).expanduser().resolve()
    for name in ("dvc.yaml", "params.yaml"):
        if not (root / name).is_file():
            raise FlowError(f"{root} is not the onegen project: no {name} there (pass project_dir)")
    return root


def load_project_params(root: Path, overrides: dict[str, Any] | None = None):
    """params.yaml (+ its profile, + overrides) as typed `Params`; a bad key or value names itself."""
    from onegen_core.config import load_params  # here: `onegen --help` must not import the config

    return load_params(root / "params.yaml", overrides or {})


def git_head(root: Path) -> str:
    """The commit checked out in `root`; '' outside a git repository (or before its first commit)."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""
