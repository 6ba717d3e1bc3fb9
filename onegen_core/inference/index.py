"""The vector-index protocol the inference engine searches, and an exact in-memory index.

Any index (the LanceDB table of `tasks/`, the in-memory one here) records the checkpoint that encoded
its vectors; a query vector from another checkpoint lives in another space, so searching across
checkpoints is refused with `IndexMismatchError` rather than returning meaningless neighbours.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class UnitRecord:
    """One [RD] vector's metadata: the unit (sentence or document) and the document it belongs to."""

    id: str
    doc_id: str
    title: str
    text: str  # the unit's own text
    doc_text: str  # the whole document's text, pasted back in R→G generation


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity
    doc_id: str
    title: str
    text: str
    doc_text: str


class IndexMismatchError(RuntimeError):
    pass


@runtime_checkable
class VectorIndex(Protocol):
    checkpoint_id: str
    dim: int

    def search(
        self, queries: np.ndarray, k: int, allowed: Sequence[Collection[str] | None] | None = None,
        exclude: Sequence[Collection[str] | None] | None = None,
    ) -> list[list[Hit]]:
        """queries (n, dim) float32, L2-normalised; `allowed[i]` restricts query i to those unit or
        document ids (the distractor setting), `exclude[i]` removes those (passages already pasted);
        returns the top-k hits per query, best first."""
        ...


def check_checkpoint(index: VectorIndex, checkpoint_id: str) -> None:
    if index.checkpoint_id != checkpoint_id:
        raise IndexMismatchError(
            f"index was encoded by checkpoint {index.checkpoint_id!r} but the querying model is "
            f"{checkpoint_id!r}: vectors from different checkpoints are not comparable; re-encode the corpus"
        )


def candidate_scores(records: Sequence[UnitRecord], scores: np.ndarray, allowed: Collection[str] | None,
                     exclude: Collection[str] | None) -> np.ndarray:
    """`scores` (n_units,) with -inf for units outside `allowed` or inside `exclude` (unit or doc ids)."""
    if allowed is not None:
        keep = np.array([r.id in allowed or r.doc_id in allowed for r in records], dtype=bool)
        scores = np.where(keep, scores, -np.inf)
    if exclude:
        drop = np.array([r.id in exclude or r.doc_id in exclude for r in records], dtype=bool)
        scores = np.where(drop, -np.inf, scores)
    return scores


class ExactIndex:
    """Brute-force cosine search over an in-memory matrix: exact, for tests and small corpora."""

    def __init__(self, records: Sequence[UnitRecord], vectors: np.ndarray, checkpoint_id: str) -> None:
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
        v = np.asarray(vectors, dtype=np.float32)
        self.vectors = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # (n, dim)
        self.records = list(records)
        self.checkpoint_id = checkpoint_id
        self.dim = int(v.shape[1]) if v.ndim == 2 else 0
        self._row = {r.id: i for i, r in enumerate(self.records)}
        if len(self._row) != len(self.records):
            raise ValueError("duplicate unit ids in the index")

    def __len__(self) -> int:
        return len(self.records)

    def search(
        self, queries: np.ndarray, k: int, allowed: Sequence[Collection[str] | None] | None = None,
        exclude: Sequence[Collection[str] | None] | None = None,
    ) -> list[list[Hit]]:
        q = np.asarray(queries, dtype=np.float32)
        scores = q @ self.vectors.T  # (n_queries, n_units)
        out: list[list[Hit]] = []
        for i in range(q.shape[0]):
            s = candidate_scores(self.records, scores[i], allowed[i] if allowed is not None else None,
                                 exclude[i] if exclude is not None else None)
            top = np.argsort(-s, kind="stable")[:k]
            out.append([self._hit(int(j), float(s[j])) for j in top if np.isfinite(s[j])])
        return out

    def _hit(self, j: int, score: float) -> Hit:
        r = self.records[j]
        return Hit(r.id, score, r.doc_id, r.title, r.text, r.doc_text)
