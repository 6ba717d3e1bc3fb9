"""The ANN index a table gets by its size (params `encode.ann_*`, measured by bench/index_scale.py)."""
from __future__ import annotations

import numpy as np
import pytest

lancedb = pytest.importorskip("lancedb")

from onegen_core.config import EncodeConfig, load_params  # noqa: E402
from onegen_core.inference.index import UnitRecord  # noqa: E402
from tasks.adapters.lance_index import AnnPlan, AnnSettings, LanceIndex, plan_ann_index  # noqa: E402


def table(tmp_path, n=1200, d=32):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    recs = [UnitRecord(f"u{i}", f"d{i}", "t", f"s{i}", f"s{i}") for i in range(n)]
    idx = LanceIndex.create(str(tmp_path / "db"), d, "ck1")
    idx.add(recs, v)
    return idx, recs, v


def built(idx: LanceIndex) -> dict:
    """What LanceDB itself reports of the table's index (not our stored plan)."""
    name = idx.table.list_indices()[0].name
    return idx.table.to_lance().stats.index_stats(name)["indices"][0]


def test_settings_defaults_are_the_config_defaults_and_params_yaml():
    # one source of truth: a LanceIndex built without settings sizes its index as params.yaml says
    from pathlib import Path

    p = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert AnnSettings() == AnnSettings.from_config(EncodeConfig()) == AnnSettings.from_config(p.encode)


def test_plan_at_a_million_rows_follows_the_measured_defaults():
    # bench/index_scale.py measured 1M x 576 (metrics/index_scale.json); these are the defaults it chose
    plan = plan_ann_index(1_000_000, 576, AnnSettings())
    assert plan == AnnPlan("ivf_rq", 1_000_000 // 4096, 0, 20, 10, 0)
    # the PQ alternative keeps LanceDB's dim/16 sub-vectors (36 at 576)
    assert plan_ann_index(1_000_000, 576, AnnSettings(index_type="ivf_pq")).num_sub_vectors == 36


def test_plan_rules():
    s = AnnSettings(index_type="ivf_pq", rows_per_partition=1000, pq_sub_vector_dims=16, nprobes=50)
    assert plan_ann_index(500, 576, s).num_partitions == 1 and plan_ann_index(500, 576, s).nprobes == 1
    assert plan_ann_index(10_000, 576, s) == AnnPlan("ivf_pq", 10, 36, 10, 10, 0)
    assert plan_ann_index(10_000, 100, s).num_sub_vectors == 10  # 100 = 10 x 10: sub-vector width 10, not 16
    assert plan_ann_index(10_000, 576, AnnSettings(index_type="ivf_rq")).num_sub_vectors == 0
    with pytest.raises(ValueError, match="ann_index_type"):
        plan_ann_index(10, 8, AnnSettings(index_type="hnsw"))


def test_config_range_checks_the_settings():
    for bad in ({"ann_rows_per_partition": 0}, {"ann_nprobes": 0}, {"ann_refine_factor": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EncodeConfig(**bad)


def test_table_past_the_threshold_gets_the_planned_ivf_pq(tmp_path):
    idx, recs, v = table(tmp_path)
    s = AnnSettings(index_type="ivf_pq", rows_per_partition=300, pq_sub_vector_dims=8, nprobes=2, refine_factor=10)
    assert not idx.build_ann_index(min_rows=1201, settings=s) and idx.ann_plan() is None
    assert idx.build_ann_index(min_rows=1200, settings=s)
    got = built(idx)
    assert got["index_type"] == "IVF_PQ" and got["metric_type"] == "cosine"
    assert got["num_partitions"] == 4 and got["sub_index"]["num_sub_vectors"] == 4
    # the plan travels with the table: a fresh open searches with the stored nprobes and refine factor
    assert LanceIndex(idx.uri).ann_plan() == AnnPlan("ivf_pq", 4, 4, 2, 10, 0)
    res = LanceIndex(idx.uri).search(v[:20], 1)
    assert [r[0].id for r in res] == [r.id for r in recs[:20]]  # refine 10 re-ranks exactly: itself first


@pytest.mark.parametrize("kind,lance_type", [("ivf_rq", "IVF_RQ"), ("ivf_hnsw_sq", "IVF_HNSW_SQ")])
def test_other_index_types_are_built_and_searched(tmp_path, kind, lance_type):
    idx, recs, v = table(tmp_path)
    assert idx.build_ann_index(1000, AnnSettings(index_type=kind, rows_per_partition=600, nprobes=2))
    assert built(idx)["index_type"].startswith(lance_type.split("_")[0]) and idx.ann_plan().index_type == kind
    assert idx.info()["index_type"].lower().replace("_", "") == lance_type.lower().replace("_", "")
    res = idx.search(v[:10], 3)
    assert sum(r[0].id == recs[i].id for i, r in enumerate(res)) >= 9 and all(len(r) == 3 for r in res)
