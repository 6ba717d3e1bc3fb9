"""The training file (the label stage's JSONL, `TrainingExample.to_dict`) as a list of examples, and the texts
the tiny backbone's tokenizer is trained on."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from onegen_core.config import TASKS, TrainDataConfig
from onegen_core.data import DataError, load_passages
from onegen_core.data.strict_json import read_jsonl
from onegen_core.method.segments import ExampleError, TrainingExample


def read_examples(path: str | Path) -> Iterator[TrainingExample]:
    """Every example of a training file, in order. Strict: bytes that are not UTF-8 (a BOM is allowed),
    a line that is not JSON (`read_jsonl`), a malformed example, a task that is not one of `config.TASKS`
    (a typo would drop the example silently) and an id given twice are `DataError`s naming file, line and
    field."""
    file = str(path)
    seen: dict[str, int] = {}
    for n, data in read_jsonl(path):
        line_at = f"line {n}"
        try:
            ex = TrainingExample.from_dict(data, where=f"{file}:{n}")
        except ExampleError as e:
            raise DataError(file, f"{line_at} (id {e.example_id!r})", e.field, e.message) from None
        except ValueError as e:  # a Document's own checks
            raise DataError(file, line_at, "documents", str(e)) from None
        if ex.task not in TASKS:
            raise DataError(file, f"{line_at} (id {ex.id!r})", "task",
                            f"unknown task {ex.task!r} (known: {', '.join(TASKS)})")
        first = seen.setdefault(ex.id, n)
        if first != n:
            raise DataError(file, f"{line_at} (id {ex.id!r})", "id", f"duplicate id (first at line {first})")
        yield ex


def load_examples(path: str | Path, tasks: list[str],
                  max_per_task: int | Mapping[str, int] = 0) -> list[TrainingExample]:
    """Examples of `tasks` in `path` (read strictly, `read_examples`). A cap > 0 (one for every task, or
    one per task as `TrainDataConfig.caps()` gives them; a task not in the mapping is uncapped) keeps that
    many examples of the task, chosen by a hash of the example id (the same subset whatever the file
    order), in file order."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: training file missing; run `dvc repro label`")
    out = [ex for ex in read_examples(path) if ex.task in tasks]
    if not out:
        raise ValueError(f"{path}: no examples of tasks {tasks}")
    caps = dict(max_per_task) if isinstance(max_per_task, Mapping) else {t: max_per_task for t in tasks}
    if any(caps.get(t, 0) > 0 for t in tasks):
        keep: set[str] = set()
        for task in tasks:
            ids = sorted((e.id for e in out if e.task == task), key=lambda i: hashlib.sha1(i.encode()).hexdigest())
            keep.update(ids[:caps[task]] if caps.get(task, 0) > 0 else ids)
        out = [e for e in out if e.id in keep]
    return out


def validation_examples(cfg: TrainDataConfig) -> list[TrainingExample]:
    """The examples `train` validates on (and `bench.val_retrieval` compares checkpoints on): the tasks of
    `cfg` (a `TrainDataConfig`) in its val_file, capped per task (`val_max_examples_by_task`), then to
    `val_max_examples` in file order."""
    val = load_examples(cfg.val_file, cfg.tasks, cfg.val_max_examples_by_task)
    return val[:cfg.val_max_examples] if cfg.val_max_examples else val


def tokenizer_texts(examples: list[TrainingExample], extra_files: list[str]) -> Iterator[str]:
    """Texts the tiny backbone's BPE is trained on: the training examples' text and documents, and any
    extra passage files ({title, text} JSON, read by the strict passage loader); never the held-out
    questions."""
    from onegen_core.method.segments import Text

    for ex in examples:
        for seg in ex.segments:
            if isinstance(seg, Text):
                yield seg.text
        for d in ex.documents:
            yield d.title
            yield " ".join(d.units)
    for path in extra_files:
        for item in load_passages(path):
            yield item.title
            yield item.text
