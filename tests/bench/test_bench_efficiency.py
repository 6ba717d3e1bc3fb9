"""The Fig. 3 benchmark's exact counts (never its timings): which decoder calls each method makes, and how
long GRIT's re-encoding pass is."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

ROUNDS, QLEN, OUT = 3, 7, 4


@pytest.fixture(scope="module")
def workload(char_tokenizer, shared_data):
    import torch

    from bench.efficiency import CORPUS
    from bench.efficiency_workload import build_workload
    from onegen_core.config import TinyBackboneConfig
    from onegen_core.method.backbone import build_tiny_backbone
    from tasks.adapters.baselines import MiniLMEncoder

    torch.set_grad_enabled(False)
    cfg = TinyBackboneConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             max_position_embeddings=8192)
    lm = build_tiny_backbone(cfg, len(char_tokenizer), seed=0).eval()
    yield build_workload(lm, char_tokenizer, MiniLMEncoder(), CORPUS, n_docs=20)
    torch.set_grad_enabled(True)


def test_rag_decoder_calls_per_method(workload):
    from bench.efficiency_workload import run_rag

    runs = {m: run_rag(m, workload, rounds=ROUNDS, qlen=QLEN, out_len=OUT, seed=1)
            for m in ("onegen", "grit", "pipeline", "lower")}
    cached = {m: r.log.count("generator", separate=False) for m, r in runs.items()}
    # OneGen: one more cached decoder call a round than the lower bound (the [RQ] step), nothing else
    assert cached["onegen"] - cached["lower"] == ROUNDS
    assert runs["onegen"].log.count("generator", separate=True) == 0 and runs["onegen"].stats.searches == ROUNDS
    # GRIT: the same [RQ] step, plus one separate pass a round over the round's query only (QLEN tokens),
    # not the growing history
    separate = runs["grit"].log.select("generator", separate=True)
    assert cached["grit"] == cached["onegen"] and [c.width for c in separate] == [QLEN] * ROUNDS
    # the pipeline: the same [RQ] step and one retriever call a round; the lower bound searches nothing
    assert cached["pipeline"] == cached["onegen"] and runs["pipeline"].log.count("retriever") == ROUNDS
    assert runs["lower"].stats.searches == 0 and runs["lower"].retrievals == ROUNDS
    # every method pastes the same passages' length and generates the same tokens
    tokens = {m: sum(c.width * c.rows for c in r.log.select("generator", separate=False)) for m, r in runs.items()}
    assert tokens["onegen"] - tokens["lower"] == ROUNDS  # only the [RQ] tokens differ


def test_entity_linking_decoder_calls(workload):
    from bench.efficiency_workload import run_el

    one, low, link = (run_el(m, workload, sentence_len=60, mentions=4, seed=2) for m in ("onegen", "lower", "linking"))
    # [RQ] and <CON> ride in one pass after each mention: +1 cached call a mention
    assert one.log.count("generator") == low.log.count("generator") + 4 and one.stats.searches == 4
    # the pipeline's linking stage: one separate QA prompt a mention (sentence + instruction + candidates)
    assert link.log.count("generator", separate=True) == 4
    assert all(c.width > 60 + 4 * 30 for c in link.log.select("generator", separate=True))


def test_a_point_reports_every_ratio_with_spread_and_the_extra_passes(workload):
    from bench.efficiency import measure_point

    e = measure_point(workload, "a", QLEN, {"rounds": 2, "qlen": QLEN, "out_len": 3}, repeats=2)
    assert set(e["ratios"]) == {"grit/onegen", "pipeline/onegen", "onegen/lower"}
    assert all(len(v["per_repeat"]) == 2 and v["min"] <= v["median"] <= v["max"] for v in e["ratios"].values())
    assert e["extra_passes_per_retrieval"] == {"onegen": 1.0, "grit": 2.0, "pipeline": 2.0}
    lim = e["physical_limit"]
    assert len(lim["per_repeat"]) == 2 and lim["decode_step_s"]["median"] > 0 and lim["search_s"]["median"] > 0
    c = measure_point(workload, "c", 4, {"sentence_len": 40, "mentions": 3}, repeats=2)
    assert set(c["ratios"]) == {"pipeline/onegen", "onegen/lower"} and "physical_limit" not in c
    assert c["extra_passes_per_retrieval"] == {"onegen": 1.0, "pipeline": 1.0}
