from __future__ import annotations

import numpy as np
import pytest

lancedb = pytest.importorskip("lancedb")

from onegen_core.inference.index import ExactIndex, IndexMismatchError, UnitRecord  # noqa: E402
from tasks.adapters.lance_index import LanceIndex  # noqa: E402


def data(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    recs = [UnitRecord(f"doc{i // 3}#{i % 3}", f"doc{i // 3}", f"Title {i // 3}", f"s{i}", f"d{i // 3}") for i in range(n)]
    return recs, v


def test_exact_search_matches_brute_force(tmp_path):
    recs, v = data()
    idx = LanceIndex.create(str(tmp_path / "db"), 16, "ck1")
    idx.add(recs[:100], v[:100])
    idx.add(recs[100:], v[100:])
    exact = ExactIndex(recs, v, "ck1")
    q = v[:5] + 0.1
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    got, ref = idx.search(q, 3), exact.search(q, 3)
    assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in ref]
    np.testing.assert_allclose([h.score for h in got[0]], [h.score for h in ref[0]], atol=1e-5)
    assert got[0][0].doc_text.startswith("d") and got[0][0].title.startswith("Title")


def test_allowed_filters_by_unit_or_document(tmp_path):
    recs, v = data()
    idx = LanceIndex.create(str(tmp_path / "db"), 16, "ck1")
    idx.add(recs, v)
    res = idx.search(v[:3], 5, allowed=[{"doc7"}, {"doc1#2", "doc9#0"}, set()])
    assert {h.id for h in res[0]} == {"doc7#0", "doc7#1", "doc7#2"}
    assert {h.id for h in res[1]} == {"doc1#2", "doc9#0"}
    assert res[2] == []


def test_ann_index_with_refine_keeps_exact_top1(tmp_path):
    recs, v = data(n=1200, d=32)
    idx = LanceIndex.create(str(tmp_path / "db"), 32, "ck1")
    idx.add(recs, v)
    assert not idx.build_ann_index(min_rows=5000)
    assert idx.build_ann_index(min_rows=1000) and idx.has_ann_index()
    res = idx.search(v[:20], 1)
    assert sum(r[0].id == recs[i].id for i, r in enumerate(res)) >= 19  # the query itself is its nearest


def test_checkpoint_is_recorded_resumed_and_replaced(tmp_path):
    recs, v = data(n=30)
    uri = str(tmp_path / "db")
    idx = LanceIndex.create(uri, 16, "ck1")
    idx.add(recs[:10], v[:10])
    again = LanceIndex.create(uri, 16, "ck1")  # an interrupted run of the same checkpoint resumes
    assert len(again) == 10 and again.ids() == {r.id for r in recs[:10]}
    assert LanceIndex(uri).checkpoint_id == "ck1"
    fresh = LanceIndex.create(uri, 16, "ck2")  # another checkpoint starts over
    assert len(fresh) == 0 and fresh.checkpoint_id == "ck2"


def test_generation_refuses_an_index_from_another_checkpoint(tmp_path, char_tokenizer, tiny_lm):
    from onegen_core.inference.generation import generate

    recs, v = data(n=6, d=tiny_lm.config.hidden_size)
    idx = LanceIndex.create(str(tmp_path / "db"), tiny_lm.config.hidden_size, "ck1")
    idx.add(recs, v)
    with pytest.raises(IndexMismatchError, match="re-encode"):
        generate(tiny_lm, char_tokenizer, ["p"], idx, checkpoint_id="ck2")


def test_opening_a_foreign_table_is_an_error(tmp_path):
    import pyarrow as pa

    db = lancedb.connect(str(tmp_path / "db"))
    db.create_table("units", schema=pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), 4))]))
    with pytest.raises(IndexMismatchError, match="not a onegen index"):
        LanceIndex(str(tmp_path / "db"))


def test_exclude_drops_units_and_documents_like_the_exact_index(tmp_path):
    recs, v = data()
    idx = LanceIndex.create(str(tmp_path / "db"), 16, "ck1")
    idx.add(recs, v)
    exact = ExactIndex(recs, v, "ck1")
    excl = [{recs[0].doc_id}, {recs[3].id}, None]
    allowed = [None, {"doc1", "doc2"}, None]
    got, ref = idx.search(v[:3], 4, allowed, excl), exact.search(v[:3], 4, allowed, excl)
    assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in ref]
    assert all(h.doc_id != recs[0].doc_id for h in got[0]) and recs[3].id not in {h.id for h in got[1]}
    assert {h.doc_id for h in got[1]} <= {"doc1", "doc2"} and got[2][0].id == recs[2].id
