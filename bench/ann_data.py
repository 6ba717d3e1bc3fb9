"""Vectors for `bench.index_scale`: a large table grown from a few thousand seed vectors, its queries, and
their exact neighbours.

Seeds are either the real [RD] vectors of an encoded LanceDB table (`seeds_from_table`: what the encode
stage stores, the trained model's unit vectors) or a clustered synthetic set (`clustered_seeds`). Every row
of the table, and every query, is a perturbed copy of one seed, picked uniformly:

    row = normalise(seed + sigma * noise),  noise ~ N(0, C),  C = the seeds' own covariance

so rows vary along the directions the real vectors vary (an isotropic noise would fill the 576 dimensions
the model leaves nearly empty). `sigma` is set so that two copies of one seed lie, on average, as far
apart as a seed lies from its nearest other seed (times `spread`): the copies fill the space between
neighbouring seeds instead of forming isolated clumps. `difficulty` reports how hard that makes the
search (relative contrast, as ann-benchmarks reports it), so the reader can judge the distribution.
"""
from __future__ import annotations

import numpy as np

_CHUNK = 32_768  # rows per matrix product: (queries, chunk) float32 scores stay ~130 MB at 1,000 queries


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def seeds_from_table(uri: str, table: str) -> np.ndarray:
    """The vectors of a LanceDB table (the encode stage's `units`: the trained model's [RD] vectors),
    (n, dim) unit rows. Errors name the table when it is missing or holds too few rows."""
    import lancedb

    try:
        t = lancedb.connect(uri).open_table(table)
    except ValueError as e:
        raise SystemExit(f"{uri}/{table}: no such table ({e}); run the encode stage first "
                         "(make run), or use --source clustered") from e
    col = t.to_arrow().column("vector").combine_chunks()
    dim = col.type.list_size
    v = np.asarray(col.flatten(), dtype=np.float32).reshape(-1, dim)  # (n, dim)
    if len(v) < 100:
        raise SystemExit(f"{uri}/{table}: only {len(v)} vectors; at least 100 seeds are needed")
    return unit_rows(v)


def clustered_seeds(n: int, dim: int, rng: np.random.Generator, decay: float = 1.0) -> np.ndarray:
    """A synthetic stand-in for model vectors, (n, dim) unit rows: a Gaussian around a shared mean
    direction (every pair has a positive cosine, as a language model's hidden states do) whose variance
    along its i-th principal axis falls as i**-decay (a few dominant directions, a long tail), in a
    random rotation."""
    spectrum = np.arange(1, dim + 1, dtype=np.float64) ** -decay
    spectrum *= 1.0 / spectrum.sum()  # total variance 1, as the mean direction's squared length
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    mean = rotation[:, 0]
    x = (rng.standard_normal((n, dim)) * np.sqrt(spectrum)) @ rotation.T + mean
    return unit_rows(x)


def nearest_other_distance(seeds: np.ndarray) -> np.ndarray:
    """Each seed's Euclidean distance to its nearest other seed, (n,)."""
    best = np.full(len(seeds), -np.inf, dtype=np.float32)
    for i in range(0, len(seeds), 4096):
        s = seeds[i:i + 4096] @ seeds.T  # (chunk, n) cosines
        s[np.arange(len(s)), np.arange(i, i + len(s))] = -np.inf  # not itself
        best[i:i + 4096] = s.max(axis=1)
    return np.sqrt(np.maximum(2.0 - 2.0 * best, 0.0))


class Perturber:
    """Perturbed unit copies of seeds (see the module docstring); `sigma` is fixed at construction."""

    def __init__(self, seeds: np.ndarray, spread: float = 1.0) -> None:
        self.seeds = seeds  # (s, dim) unit rows
        centred = seeds - seeds.mean(axis=0)
        eigval, eigvec = np.linalg.eigh(centred.T @ centred / len(seeds))  # C = V diag(l) V^T
        self.noise_map = (np.sqrt(np.maximum(eigval, 0.0))[:, None] * eigvec.T).astype(np.float32)  # (dim, dim)
        total_var = float(eigval.clip(0).sum())
        self.nn_distance = float(np.median(nearest_other_distance(seeds)))
        # E|sigma n1 - sigma n2|^2 = 2 sigma^2 tr(C): copies of one seed sit a seed-to-neighbour distance apart
        self.sigma = spread * self.nn_distance / np.sqrt(2.0 * total_var)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(rows (n, dim) float32 unit vectors, the seed index of each row (n,))."""
        which = rng.integers(0, len(self.seeds), n)
        out = np.empty((n, self.seeds.shape[1]), dtype=np.float32)
        for i in range(0, n, _CHUNK):
            j = which[i:i + _CHUNK]
            z = rng.standard_normal((len(j), self.seeds.shape[1]), dtype=np.float32)
            out[i:i + len(j)] = unit_rows(self.seeds[j] + self.sigma * (z @ self.noise_map))
        return out, which


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of unit queries over unit rows by chunked matrix products: (ids (q, k) int64,
    cosines (q, k)), best first. The ground truth every index is scored against."""
    nq = len(queries)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, k), dtype=np.int64)
    for i in range(0, len(base), _CHUNK):
        s = queries @ base[i:i + _CHUNK].T  # (q, chunk)
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, top + i], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_i, keep, axis=1)
    return best_i, best_s


def difficulty(base: np.ndarray, queries: np.ndarray, gt_cos: np.ndarray, gt_ids: np.ndarray,
               seed_of_rows: np.ndarray, seed_of_queries: np.ndarray, rng: np.random.Generator) -> dict:
    """How hard the search is: relative contrast at k (mean distance to a random row over the distance
    to the k-th neighbour; ann-benchmarks' measure: near 1 = every row about as far, hard), the mean
    cosine of the 1st and k-th neighbour, and the share of a query's true top-k that are copies of the
    query's own seed (1.0 = isolated clumps; lower = neighbourhoods shared between seeds)."""
    sample = base[rng.integers(0, len(base), min(len(base), 2000))]
    mean_dist = np.sqrt(np.maximum(2.0 - 2.0 * (queries @ sample.T), 0.0)).mean(axis=1)  # (q,)
    kth = np.sqrt(np.maximum(2.0 - 2.0 * gt_cos[:, -1], 1e-12))
    return {
        "relative_contrast_at_k": round(float(np.mean(mean_dist / kth)), 3),
        "top1_cosine_mean": round(float(gt_cos[:, 0].mean()), 4),
        "topk_cosine_mean": round(float(gt_cos[:, -1].mean()), 4),
        "own_seed_share_of_topk": round(float((seed_of_rows[gt_ids] == seed_of_queries[:, None]).mean()), 3),
    }
