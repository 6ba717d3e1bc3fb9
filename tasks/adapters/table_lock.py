"""One writer at a time on a local LanceDB table: `onegen index add` and the encode stage plan what to add
from the table's current rows, then append. Two writers planning at once both see the same rows, both
append, and the table ends with every unit twice (`duplicate unit ids in the index` on every later search).
An exclusive `flock` on a file beside the table serialises them: the second writer waits, then plans
against the first one's result. The kernel drops the lock when its process dies (`kill -9` included), so a
crashed writer leaves no stale lock. Object-store URIs (`s3://…`) are not locked here: there, writers must
not overlap (Lance's own commit check refuses a conflicting commit)."""
from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def lock_path(uri: str, table: str) -> Path:
    """The lock file of `uri`/`table` (a dot file: LanceDB lists only `*.lance` folders as tables)."""
    return Path(uri) / f".{table}.writer.lock"


@contextmanager
def writer_lock(uri: str, table: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the writer lock of a local table for the duration; when another process holds it, say so once
    (`on_wait`, default the log) and wait for it."""
    if "://" in uri:
        yield
        return
    path = lock_path(uri, table)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            (on_wait or log.warning)(f"{uri}/{table}: another writer holds the table ({holder}); waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
