"""The append-only, fsync'ed cache of LLM decomposition answers, keyed by (example id, prompt hash).

Annotating ~100k questions with a 72B model costs hours and money, so every final result is appended
the moment it completes: a killed run loses at most its in-flight requests and a re-run pays for
nothing twice. A changed prompt, record or model gives a new key, so stale answers are never reused.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from onegen_core.data.multihop import MultiHopRecord
from onegen_core.prepare.decomposition import Decomposition, build_prompt, nonblank_text, prompt_hash
from tasks.adapters.annotators import Backend

logger = logging.getLogger(__name__)

CacheKey = tuple[str, str]  # (example id, prompt hash)


def cache_key(record: MultiHopRecord, backend: Backend, prompt_style: str = "fig13",
              structured: bool = False) -> CacheKey:
    """(example id, hash of this record's prompt in `prompt_style`, of the backend's name and model, and of
    whether decoding was constrained: a constrained answer is another answer)."""
    asked_of = f"{backend.name}/{backend.model}" + ("/structured" if structured else "")
    return record.id, prompt_hash(build_prompt(record, prompt_style), asked_of)


Status = Literal["accepted", "rejected"]


@dataclass(frozen=True)
class AnnotationResult:
    """The final outcome for one key: an accepted decomposition, or a rejection with its reason.
    ``response`` is the last raw LLM answer, kept so rejections can be audited without paying again."""

    example_id: str
    status: Status
    attempts: int
    decomposition: Decomposition | None = None
    reason: str | None = None
    detail: str = ""
    response: str = ""

    def __post_init__(self) -> None:
        if self.status not in ("accepted", "rejected"):
            raise ValueError(f"status must be 'accepted' or 'rejected', got {self.status!r}")
        if (self.status == "accepted") != (self.decomposition is not None):
            raise ValueError("an accepted result needs a decomposition, a rejected one has none")
        if self.status == "rejected" and not self.reason:
            raise ValueError("a rejected result needs a reason")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"example_id": self.example_id, "status": self.status, "attempts": self.attempts}
        if self.decomposition is not None:
            out["decomposition"] = self.decomposition.to_dict()
        if self.reason is not None:
            out["reason"] = self.reason
            out["detail"] = self.detail
        out["response"] = self.response
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> AnnotationResult:
        if not isinstance(raw, dict):
            raise ValueError(f"expected an object, got {type(raw).__name__}")
        decomposition = raw.get("decomposition")
        return cls(
            example_id=nonblank_text(raw, "example_id", "result"),
            status=raw.get("status"),
            attempts=int(raw.get("attempts", 0)),
            decomposition=None if decomposition is None else Decomposition.from_dict(decomposition),
            reason=raw.get("reason"),
            detail=raw.get("detail", ""),
            response=raw.get("response", ""),
        )


class AnnotationCache:
    """Append-only JSONL of final results, one line ``{"key": [id, hash], "result": {...}}`` each.

    Each :meth:`put` writes one line, flushes and fsyncs before returning, so a result the caller saw
    stored survives a crash or SIGKILL. On open, a truncated last line (a crash mid-write) is counted
    in ``truncated_lines`` and cut off so the next append starts on a clean line; a malformed line
    elsewhere is corruption and raises. A key seen twice on load keeps its first result
    (``duplicate_lines``); :meth:`put` refuses a key already present.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.truncated_lines = 0
        self.duplicate_lines = 0
        self._entries: dict[CacheKey, AnnotationResult] = {}
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")

    # -- loading

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # After a clean write the file ends with "\n", so the last split item is b"".
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            is_last = number == len(lines)
            try:
                key, result = self._decode(line)
            except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
                if not is_last:
                    raise ValueError(f"{self.path}: line {number}: malformed cache entry: {exc}") from None
                self._cut_truncated_tail(len(data) - len(line), number)
                return
            if is_last:  # complete JSON whose newline was lost: keep it, end the line
                with open(self.path, "ab") as f:
                    f.write(b"\n")
            self._keep(key, result, number)
        logger.info("annotation cache %s: %d results loaded", self.path, len(self._entries))

    @staticmethod
    def _decode(line: bytes) -> tuple[CacheKey, AnnotationResult]:
        raw = json.loads(line)
        key = raw["key"]
        if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise ValueError(f"key must be [example id, prompt hash], got {key!r}")
        return (key[0], key[1]), AnnotationResult.from_dict(raw["result"])

    def _cut_truncated_tail(self, offset: int, number: int) -> None:
        self.truncated_lines += 1
        logger.warning("annotation cache %s: line %d is truncated (interrupted write); dropping it",
                       self.path, number)
        os.truncate(self.path, offset)

    def _keep(self, key: CacheKey, result: AnnotationResult, number: int) -> None:
        if key in self._entries:
            self.duplicate_lines += 1
            logger.warning("annotation cache %s: line %d repeats key %s; keeping the first", self.path, number, key)
            return
        self._entries[key] = result

    # -- access

    def get(self, key: CacheKey) -> AnnotationResult | None:
        return self._entries.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[CacheKey, AnnotationResult]]:
        return iter(list(self._entries.items()))

    def put(self, key: CacheKey, result: AnnotationResult) -> None:
        """Append one result durably. ``KeyError`` if the key is already stored: paying twice for
        the same answer is a bug in the caller."""
        line = json.dumps({"key": list(key), "result": result.to_dict()}, ensure_ascii=False) + "\n"
        with self._lock:
            if key in self._entries:
                raise KeyError(f"annotation cache {self.path}: key {key} is already stored")
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._entries[key] = result

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> AnnotationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
