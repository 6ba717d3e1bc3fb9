"""bench/serve_rag.py and bench/rag_systems.py: the replicated corpus, GRIT's re-encoding (its length, and
its vector equal to OneGen's at a first hop), and a tiny run of the whole bench through the real engine
(its JSON's structure and counts, never its timings)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import ARTHUR, one_thread

# ------------------------------------------------------------------------------------------ corpus

def test_perturbed_copies_keep_the_original_first_and_stay_near_it():
    from bench.rag_systems import perturbed_copies

    v = np.random.default_rng(1).standard_normal((50, 576)).astype(np.float32)
    out = perturbed_copies(v, 4, sigma=0.3, seed=7)
    assert out.shape == (200, 576)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(out[:50], unit, atol=1e-6)  # copy 0: the vectors themselves
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    cos = np.concatenate([(out[50 * k:50 * (k + 1)] * unit).sum(1) for k in (1, 2, 3)])
    assert abs(cos.mean() - 1 / np.sqrt(1 + 0.3 ** 2)) < 0.01  # noise of norm sigma
    np.testing.assert_array_equal(out, perturbed_copies(v, 4, sigma=0.3, seed=7))
    assert not np.allclose(out[50:], perturbed_copies(v, 4, sigma=0.3, seed=8)[50:])
    # copies are drawn per (seed, copy): writing them in chunks gives the same rows as one call
    from bench.rag_systems import perturbed_copy

    np.testing.assert_array_equal(perturbed_copy(v, 3, 0.3, 7), out[150:])


def test_replicated_records_keep_text_and_document_with_new_ids():
    from bench.rag_systems import copies_for, replicated_records
    from onegen_core.inference.index import UnitRecord

    recs = [UnitRecord("a-0", "a", "A", "one.", "one. two."), UnitRecord("a-1", "a", "A", " two.", "one. two.")]
    out = replicated_records(recs, 3)
    assert [r.id for r in out] == ["a-0", "a-1", "a-0~1", "a-1~1", "a-0~2", "a-1~2"]
    assert out[0] is recs[0] and {r.doc_id for r in out} == {"a"}
    assert [r.text for r in out[2:4]] == ["one.", " two."] and out[5].doc_text == "one. two."
    assert copies_for(2286, 100_000) == 44 and copies_for(10, 10) == 1 and copies_for(3, 10) == 4
    with pytest.raises(ValueError):
        copies_for(0, 10)


# ------------------------------------------------------------------------------------------ GRIT's pass

@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return Path(tmp_path_factory.getbasetemp()) / "serve-rag"


@pytest.fixture(scope="module")
def tiny_service(work_dir):
    from onegen_core.config import load_params
    from tasks.serving.service import ModelService
    from tasks.serving.tiny import build_tiny_project
    from tests.conftest import ROOT

    with one_thread():
        paths = build_tiny_project(work_dir / "tiny")
        params = load_params(ROOT / "params.yaml", {"profile": "tiny", "evaluate.checkpoint": paths["checkpoint"],
                                                    "encode.uri": paths["index"]})
        yield ModelService(params)


def test_grit_reencodes_the_query_text_once_and_equals_onegen_at_the_first_hop(tiny_service):
    from bench.rag_systems import GritEncoder, RetrieverBridge
    from onegen_core.inference.generation import RetrievalPolicy, generate
    from onegen_core.method.prompts import question_prompt
    from tasks.adapters.eval_systems import QueryText

    s = tiny_service
    grit = GritEncoder(s.model, s.tokenizer)
    prompt = s.seg.prompt(question_prompt(ARTHUR))
    (res,) = generate(s.model, s.tokenizer, [prompt], s.units, RetrievalPolicy(max_retrievals=1, max_new_tokens=4))
    first_rq = prompt + res.token_ids[: res.retrievals[0].position - len(prompt) + 1]
    assert first_rq[-1] == s.seg.ids.rq and len(first_rq) == len(prompt) + 1  # the model retrieves first
    bridge = RetrieverBridge("grit", QueryText(s.tokenizer, "implicit"), grit, s.units, s.checkpoint_id)
    bridge.query_encoder(0, first_rq)
    bridge.query_encoder(1, s.seg.prompt(question_prompt("Who founded it?")) + [s.seg.ids.rq])
    hits = bridge.search(np.ones((2, 1), np.float32), 2)
    # one pass for both rows; each re-encodes prompt(question_prompt(query text)) + [RQ]
    assert grit.passes == 1 and bridge.queries == 2 and len(hits) == 2
    assert grit.ids(ARTHUR) == prompt + [s.seg.ids.rq]
    assert grit.tokens == len(prompt) + 1 + len(s.seg.prompt(question_prompt("Who founded it?"))) + 1
    # a first hop's query text is the question: the re-encoded vector is the one OneGen computed
    np.testing.assert_allclose(grit([ARTHUR, "Who founded it?"])[0], res.query_vectors[0], atol=1e-5)
    with pytest.raises(RuntimeError):  # a search without recorded texts cannot pair them
        bridge.search(np.ones((1, 1), np.float32), 1)


def test_the_query_encoder_is_bound_only_inside_a_baseline_batch(tiny_service):
    import onegen_core.inference.generation as generation
    import tasks.serving.service as service_module
    from bench.rag_systems import query_encoder_in_service

    calls = []
    with query_encoder_in_service(lambda row, seq: calls.append(row) or np.ones(4, np.float32)):
        assert service_module.generate.keywords["query_encoder"] is not None
        with pytest.raises(RuntimeError):
            with query_encoder_in_service(lambda row, seq: None):
                pass
    assert service_module.generate is generation.generate


# ------------------------------------------------------------------------------------------ the bench

@pytest.fixture(scope="module")
def tiny_run(work_dir, tiny_service):
    from bench.serve_rag import main

    argv = ["--tiny", "--units", "250", "--batch-sizes", "1,2", "--questions", "2", "--repeats", "2", "--threads",
            "1", "--work-dir", str(work_dir), "--out", str(work_dir / "metrics")]
    with one_thread():
        main(argv + ["--no-probes"])
    return argv, json.loads((work_dir / "metrics" / "serve_rag.json").read_text())


@pytest.mark.slow
def test_the_bench_writes_every_phase_and_the_ratios(tiny_run):
    import onegen_core.inference.generation as generation
    import tasks.serving.service as service_module

    _, out = tiny_run
    assert service_module.generate is generation.generate  # the baselines' binding is gone
    corpus = out["corpus"]
    assert corpus["onegen"]["rows"] == corpus["minilm"]["rows"] == corpus["real_units"] * corpus["copies"] >= 250
    assert (corpus["onegen"]["dim"], corpus["minilm"]["dim"]) == (64, 384)
    phases = out["phases"]
    assert len(phases) == 2 * 2 * 3  # repeats x batch sizes x methods
    for r in (0, 1):
        for b in (1, 2):
            ph = [p for p in phases if p["repeat"] == r and p["batch_size"] == b]
            assert sorted(p["method"] for p in ph) == ["grit", "onegen", "pipeline"]
    firsts = [p["method"] for p in phases[::3]]
    assert len(set(firsts)) > 1  # the order rotates
    for p in phases:
        assert p["questions"] == 2 and len(p["latency_ms"]) == 2 and len(p["answers"]) == 2
        assert p["retrievals"] >= 1 and p["generator_forward_passes"] > 0
        if p["method"] == "onegen":
            assert p["retriever"] == {}  # its query vector is the [RQ] hidden state
        else:  # every [RQ] went through the bridge, one encoder pass per engine step with retrievals
            rt = p["retriever"]
            assert rt["retriever_queries"] == p["retrievals"] and rt["retriever_calls"] <= p["retrievals"]
            assert rt["retriever_passes"] == rt["retriever_calls"] and rt["retriever_tokens"] > 0
    for name in ("onegen_over_pipeline", "onegen_over_grit"):
        for b in ("1", "2"):
            s = out["ratios_questions_per_s"][name][b]
            assert len(s["values"]) == 2 and s["min"] <= s["median"] <= s["max"] and s["min"] > 0
    assert out["points"]["grit"]["2"]["repeats"] == 2
    mem = out["memory"]
    assert mem["holds"]["pipeline"] == ["generator", "minilm", "minilm_table"]
    assert mem["components"]["minilm"]["parameters"] > 20_000_000 > mem["components"]["generator"]["parameters"]
    assert mem["components"]["onegen_table"]["vector_bytes"] == corpus["onegen"]["rows"] * 64 * 4


@pytest.mark.slow
def test_a_memory_probe_loads_only_its_method(tiny_run):
    from bench.serve_rag import run_probes

    argv, _ = tiny_run
    probes = run_probes(argv, ["onegen", "pipeline"])
    for m, p in probes.items():
        assert p["method"] == m and 0 < p["rss_mb_after_imports"] < p["rss_mb"] <= p["peak_rss_mb"]
    assert probes["pipeline"]["rss_mb"] > probes["onegen"]["rss_mb"]  # MiniLM and its table on top
