"""Write a file or a folder so that a reader sees the old one or the new one, never half of either.

Why: every stage can be interrupted (Ctrl-C, a node lost, a full disk). Writing in place would leave
a truncated JSONL that the next stage reads as complete. Each writer here writes a temporary sibling
(same folder, so the rename stays on one filesystem) and renames it over the target; on any failure
the temporary is removed and the old file is left as it was.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_path", "replace_dir", "write_bytes_atomic", "write_text_atomic"]


def _tmp_sibling(path: Path) -> Path:
    # the pid keeps two processes that write the same target from sharing a temporary
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to (by any writer: NumPy, gzip, a library that
    takes a file name); renamed over `path` when the block exits without an error, removed otherwise.
    The temporary keeps `path`'s suffixes at its end, so a writer that picks a format by suffix
    (`.npz`, `.gz`) picks the same one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{''.join(path.suffixes)}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Replace `path` with `text`. A text that cannot be encoded (a lone surrogate that got past a
    loader) is a `ValueError` naming the file and the character; the old file is kept."""
    path = Path(path)
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError as e:
        raise ValueError(f"{path}: text not encodable as {encoding.upper()} at char {e.start} ({e.reason}); "
                         "old file kept") from None
    write_bytes_atomic(path, data)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` (old or new, never half)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def replace_dir(dst: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Replace the folder `dst` with what `build(tmp)` writes into a fresh temporary folder beside it.
    A failed build leaves `dst` as it was. The swap itself is two renames (old aside, new in place):
    a crash between them leaves the old folder under `<dst>.old`, never a half-written `dst`."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(dst)
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        build(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst
