"""Self-RAG negatives (App. F): for each positive passage, the corpus passages an embedding model
ranks inside a window far down the list (e.g. ranks 5985–6000 of ~6000): unrelated enough not to be
false negatives, drawn from the same corpus so they are not trivially off-domain."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rank_window_negatives(
    positives: Sequence[str], corpus: Sequence[str], encode, window: tuple[int, int], batch_size: int = 256
) -> list[list[int]]:
    """For each positive text, the indices of `corpus` ranked in [window[0], window[1]) by cosine
    similarity (rank 0 = most similar). `encode(texts) -> (n, dim)` L2-normalised vectors (MiniLM).
    Corpus passages identical to the positive are never returned (they would be false negatives)."""
    lo, hi = window
    if not 0 <= lo < hi:
        raise ValueError(f"window must satisfy 0 <= lo < hi, got {window}")
    if hi > len(corpus):
        raise ValueError(f"window end {hi} is past the corpus size {len(corpus)}")
    c = np.asarray(encode(list(corpus)), dtype=np.float32)  # (n_corpus, dim)
    out = []
    for i in range(0, len(positives), batch_size):
        q = np.asarray(encode(list(positives[i:i + batch_size])), dtype=np.float32)  # (b, dim)
        order = np.argsort(-(q @ c.T), axis=1, kind="stable")  # (b, n_corpus)
        for j, row in enumerate(order):
            pos_text = positives[i + j].strip()
            ranked = [int(k) for k in row if corpus[k].strip() != pos_text]
            out.append(ranked[lo:hi])
    return out
