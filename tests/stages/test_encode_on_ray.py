"""`encode.executor: ray`: the same table as the local encode (ids, vectors within 1e-5, schema and checkpoint
stamp, report), and the same resume rule (only unit ids not yet stored are appended), on a local Ray."""
from __future__ import annotations

import numpy as np
import pytest

from tests.stages.conftest import encode_setup, table_rows

pytestmark = pytest.mark.slow


def test_ray_encode_writes_the_local_table(tmp_path, char_tokenizer, tiny_lm, shared_data):
    pytest.importorskip("lance_ray")
    import dataclasses

    import lancedb

    from onegen_core.config import RayDataConfig
    from tasks import encode

    # 200 tokens: some paragraph loses units to truncation, counted the same way on both paths
    cfg = encode_setup(tmp_path, char_tokenizer, tiny_lm, shared_data, n_questions=2, max_doc_length=200)
    local = encode.run(cfg)
    ray_cfg = dataclasses.replace(cfg, uri=str(tmp_path / "idx-ray"), report_path=str(tmp_path / "enc-ray.json"))
    # two replicas and a commit every 7 documents: several Ray Data jobs, batches spread over actors
    rd = RayDataConfig(actors_min=1, actors_max=2, cpus_per_actor=1.0, task_cpus=0.25, commit_every=7)
    on_ray = encode.run(ray_cfg, ray_data=rd)

    drop = ("uri", "seconds", "ray_nodes", "kb")
    assert {k: v for k, v in on_ray.items() if k not in drop} == {k: v for k, v in local.items() if k not in drop}
    assert on_ray["ray_nodes"] and "ray_nodes" not in local  # where the replicas ran, reported
    assert local["units_truncated"] > 0
    a, b = table_rows(cfg.uri, cfg.table), table_rows(ray_cfg.uri, cfg.table)
    assert sorted(a) == sorted(b) and len(b) == on_ray["units_in_index"]
    for uid, row in a.items():
        assert row[:5] == b[uid][:5], uid
        np.testing.assert_allclose(b[uid][5], row[5], atol=1e-5)
    schema_a = lancedb.connect(cfg.uri).open_table(cfg.table).schema
    schema_b = lancedb.connect(ray_cfg.uri).open_table(cfg.table).schema
    assert schema_a == schema_b and schema_a.metadata == schema_b.metadata


def test_ray_encode_resumes_with_the_unit_ids_not_yet_stored(tmp_path, char_tokenizer, tiny_lm, shared_data):
    pytest.importorskip("lance_ray")
    import dataclasses
    import json
    from pathlib import Path

    from onegen_core.config import RayDataConfig
    from tasks import encode

    cfg = encode_setup(tmp_path, char_tokenizer, tiny_lm, shared_data, n_questions=2, max_doc_length=200)
    rd = RayDataConfig(actors_min=1, actors_max=1, commit_every=100)
    # an "interrupted" run: only the first question's paragraphs made it into the table
    full = Path(cfg.hotpotqa[0])
    first_only = tmp_path / "first.json"
    first_only.write_text(json.dumps(json.loads(full.read_text())[:1]))
    partial = encode.run(dataclasses.replace(cfg, hotpotqa=[str(first_only)]), ray_data=rd)
    resumed = encode.run(cfg, ray_data=rd)
    # the second question's 10 paragraphs, plus the first question's truncated ones (never complete): those
    # re-run, and their stored units are not written twice
    assert resumed["documents"] == 20
    assert resumed["documents_encoded_now"] == 10 + partial["documents_truncated"]
    ids = list(table_rows(cfg.uri, cfg.table))
    from tasks.adapters.lance_index import LanceIndex

    stored = [r.id for r in LanceIndex(cfg.uri, cfg.table).records()]
    assert len(stored) == len(set(stored)) == len(ids) == resumed["units_in_index"]
    again = encode.run(cfg, ray_data=rd)
    assert again["units_in_index"] == resumed["units_in_index"]
    assert again["documents_encoded_now"] == resumed["documents_truncated"]
