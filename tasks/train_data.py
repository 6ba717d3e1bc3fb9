"""Reading the label stage's training JSONL (the documented format, `TrainingExample.to_dict`)."""
from __future__ import annotations

import json
from pathlib import Path

from onegen_core.segments import TrainingExample


def load_examples(path: str | Path, tasks: list[str]) -> list[TrainingExample]:
    """Examples of `tasks` in `path`; a malformed line is an error naming the line and field."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: training file missing; run `dvc repro label`")
    out = []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            ex = TrainingExample.from_dict(json.loads(line), where=f"{path}:{n}")
            if ex.task in tasks:
                out.append(ex)
    if not out:
        raise ValueError(f"{path}: no examples of tasks {tasks}")
    return out
