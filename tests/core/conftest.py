"""Helpers the core tests share (fixtures common to every folder are in tests/conftest.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_lines(path: Path, rows: list[Any], prefix: bytes = b"") -> Path:
    """`rows` as JSON Lines at `path` (a `bytes` row is written as it is, to make broken lines), after
    `prefix` (a byte-order mark, say). Returns `path`."""
    path.write_bytes(prefix + b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path
