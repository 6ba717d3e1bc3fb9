"""The records the label stage could not turn into an example, counted by task and reason.

Why a counter and not a log alone: a skip is a record the model never trains on, so `report.json` says
how many were lost and why (`to_dict`), and the stage's skip-rate gate reads the counts (`count`, `first`).
"""
from __future__ import annotations

import logging
import re
from collections import Counter

# the label stage's logger: a skip is one of its log lines, under the name it always had
log = logging.getLogger("onegen.label")
MAX_LISTED_SKIPS = 50


def skip_reason(message: str) -> str:
    """The reason a skip counts under: quoted names, ids and numbers folded to "…" so that like skips
    count together (a field name `field 'x'` is kept, unquoted), cut to 80 characters."""
    named = re.sub(r"field '([^']*)'", r"field \1", message)
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "…", named)[:80]


class Skips:
    """Records that became no example, per task and reason, with the first messages in full."""

    def __init__(self) -> None:
        self.by_task: dict[str, Counter] = {}
        self.listed: list[str] = []

    def add(self, task: str, where: str, message: str) -> None:
        """One skip of `task`: `where` (file:line, or record) and what was wrong."""
        self.by_task.setdefault(task, Counter())[skip_reason(message)] += 1
        full = f"[{task}] {where}: {message}"
        if len(self.listed) < MAX_LISTED_SKIPS:
            self.listed.append(full)
        log.warning("skipped: %s", full)

    def count(self, task: str) -> int:
        """How many records of `task` were skipped."""
        return sum(self.by_task.get(task, Counter()).values())

    def first(self, task: str) -> str | None:
        """The first listed skip of `task` in full (what a failed skip-rate gate shows), if any."""
        return next((m for m in self.listed if m.startswith(f"[{task}]")), None)

    def to_dict(self) -> dict[str, dict[str, int]]:
        """task → reason → count, tasks sorted, reasons most common first (the report's `skipped`)."""
        return {task: dict(c.most_common()) for task, c in sorted(self.by_task.items())}
