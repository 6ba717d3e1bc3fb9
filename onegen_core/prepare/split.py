"""The train/validation split of the labelled examples: which examples are held apart, by task.

Pure given the seed: the same tasks in the same order always give the same split, so `train.jsonl` and
`val.jsonl` are reproducible byte for byte.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence

# the label stage's logger: the split is one of its steps, its warning keeps the name it always had
log = logging.getLogger("onegen.label")


def validation_indices(tasks: Sequence[str], val_fraction: float, val_count_by_task: Mapping[str, int],
                       seed: int) -> set[int]:
    """Indices of the examples held apart for validation, given each example's task. One seeded shuffle
    of all examples; with `val_count_by_task` empty, its first round(val_fraction × n) go to validation;
    otherwise each task's first examples in that order: the count named for it (at most half of the task's
    examples, with a warning), or val_fraction of its own examples. Why per task: at 10 % of everything
    the multi-hop part of validation is 15 questions (30 `[RQ]`, one query = 3.3 points), too few to tell
    two recipes apart on the goal that matters."""
    order = list(range(len(tasks)))
    random.Random(seed).shuffle(order)
    if not val_count_by_task:
        n_val = int(round(val_fraction * len(tasks)))
        if n_val >= len(tasks):  # val_fraction < 1, but a rounding on a tiny set must not empty train
            n_val = len(tasks) - 1
        return set(order[:n_val])
    val: set[int] = set()
    for task in sorted(set(tasks)):
        mine = [i for i in order if tasks[i] == task]
        if task in val_count_by_task:
            n = val_count_by_task[task]
            if n > len(mine) // 2:  # a small (debug, test) run keeps half of the task to train on
                log.warning("label.val_count_by_task.%s is %d but the label stage made %d %s examples: "
                            "validating on %d, training on the rest", task, n, len(mine), task, len(mine) // 2)
                n = len(mine) // 2
        else:
            n = min(int(round(val_fraction * len(mine))), len(mine) - 1)
        val.update(mine[:n])
    return val
