"""The training file (the label stage's JSONL, `TrainingExample.to_dict`) as a list of examples, and the texts
the tiny backbone's tokenizer is trained on."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from onegen_core.method.segments import TrainingExample


def load_examples(path: str | Path, tasks: list[str], max_per_task: int = 0) -> list[TrainingExample]:
    """Examples of `tasks` in `path`; a malformed line is an error naming the line and field.
    `max_per_task` > 0 keeps that many examples of each task, chosen by a hash of the example id (the
    same subset whatever the file order), in file order."""
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
    if max_per_task > 0:
        keep: set[str] = set()
        for task in tasks:
            ids = sorted((e.id for e in out if e.task == task), key=lambda i: hashlib.sha1(i.encode()).hexdigest())
            keep.update(ids[:max_per_task])
        out = [e for e in out if e.id in keep]
    return out


def tokenizer_texts(examples: list[TrainingExample], extra_files: list[str]) -> Iterator[str]:
    """Texts the tiny backbone's BPE is trained on: the training examples' text and documents, and any
    extra passage files ({title, text} JSON); never the held-out questions."""
    from onegen_core.method.segments import Text

    for ex in examples:
        for seg in ex.segments:
            if isinstance(seg, Text):
                yield seg.text
        for d in ex.documents:
            yield d.title
            yield " ".join(d.units)
    for path in extra_files:
        for item in json.loads(Path(path).read_text()):
            yield item["title"]
            yield item["text"]
