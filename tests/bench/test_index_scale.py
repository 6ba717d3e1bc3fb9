"""bench/index_scale.py and bench/ann_data.py: exact ground truth, the perturbed table, and a tiny run of the
whole grid (its JSON's points and recalls, never its timings)."""
from __future__ import annotations

import json

import numpy as np
import pytest


def test_exact_topk_matches_a_full_sort():
    from bench.ann_data import exact_topk, unit_rows

    rng = np.random.default_rng(0)
    base, q = unit_rows(rng.standard_normal((70_000, 24))), unit_rows(rng.standard_normal((7, 24)))
    ids, cos = exact_topk(base, q, 10)  # (7, 10) each, over more rows than one chunk
    full = q @ base.T
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1)[:, :10])
    np.testing.assert_allclose(cos, np.take_along_axis(full, ids, 1), atol=1e-6)


def test_perturbed_rows_are_unit_copies_of_their_seed():
    from bench.ann_data import Perturber, clustered_seeds

    rng = np.random.default_rng(1)
    seeds = clustered_seeds(200, 48, rng)
    rows, which = Perturber(seeds, 1.0).sample(5000, rng)  # (5000, 48), seed index of each row
    assert rows.shape == (5000, 48) and which.shape == (5000,)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    own = (rows * seeds[which]).sum(1)
    other = (rows * seeds[(which + 1) % 200]).sum(1)
    assert own.mean() > other.mean()  # a copy stays nearer its own seed than another


@pytest.mark.slow
def test_a_tiny_grid_runs_every_family(tmp_path):
    from bench.index_scale import main

    rep = main(["--rows", "3000", "--queries", "40", "--source", "clustered", "--seeds", "100", "--dim", "32",
                "--repeats", "2", "--block", "20", "--slow-queries", "10", "--warmup", "1",
                "--pq-sub-vectors", "4", "--partitions", "8", "--nprobes", "2", "8", "--refine", "0", "10",
                "--hnsw-ef", "100", "--faiss-ef", "32", "--faiss-nlist", "8", "--workdir", str(tmp_path / "w"),
                "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "index_scale.json").read_text())["goal"] == rep["goal"]
    assert (tmp_path / "out" / "index_scale.png").stat().st_size > 0
    pts = {p["name"]: p for p in rep["points"]}
    # the exhaustive references are exact
    assert pts["lancedb exact"]["recall_at_10"] == 1.0 and pts["numpy brute force"]["recall_at_10"] == 1.0
    assert pts["lancedb exact"]["queries"] == 10 and pts["numpy brute force"]["queries"] == 10
    kinds = {(p["family"], p["index_type"]) for p in rep["points"]}
    assert {("lancedb", "IVF_PQ"), ("lancedb", "IVF_RQ"), ("lancedb", "IVF_HNSW_SQ")} <= kinds
    pq = [p for p in rep["points"] if p["index_type"] == "IVF_PQ"]
    assert len(pq) == 4  # 1 sub-vector count x 1 partition count x 2 nprobes x 2 refine factors
    for p in rep["points"]:
        assert 0.0 <= p["recall_at_1"] <= 1.0 and 0.0 <= p["recall_at_10"] <= 1.0
        assert len(p["p50_ms_per_repeat"]) == 2 and p["p50_ms_min"] <= p["p50_ms_max"]
        if p["family"] != "numpy" and p["index_type"] != "flat":
            assert p["build_s"] > 0 and p["index_bytes"] > 0
    assert rep["data"]["dim"] == 32 and rep["goal"]["target"] == {"p50_ms": 10.0, "recall_at_10": 0.95}
    assert not list((tmp_path / "w").iterdir())  # the table directory is removed
