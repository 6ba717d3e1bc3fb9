"""The Fig. 3 benchmark's exact counts (never its timings): which decoder calls each method makes, and how
long GRIT's re-encoding pass is."""
from __future__ import annotations

import copy

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


def test_rounds_pool_every_repeat_and_a_check_counts_medians_inside_the_reference(workload):
    """--rounds: the spreads of K rounds pooled over all their repeats, each round's median kept; rounds that
    counted different decoder calls are refused. --check: a run's medians against a reference's spreads."""
    from bench.efficiency import check_against, measure_point, pool_rounds, round_args

    kw = {"rounds": 2, "qlen": QLEN, "out_len": 3}
    rounds = [{"points": [{"model": "tiny", **measure_point(workload, "a", QLEN, kw, repeats=2)}]} for _ in range(2)]
    (p,) = pool_rounds(rounds)
    for k, v in p["ratios"].items():
        per = [x for r in rounds for x in r["points"][0]["ratios"][k]["per_repeat"]]
        assert v["per_repeat"] == per and len(per) == 4 and v["min"] == min(per) and v["max"] == max(per)
        assert v["round_medians"] == [r["points"][0]["ratios"][k]["median"] for r in rounds]
    assert len(p["physical_limit"]["per_repeat"]) == 4 and len(p["physical_limit"]["search_s"]["per_repeat"]) == 4
    other = {"points": [dict(rounds[1]["points"][0], calls={"onegen": {}})]}
    with pytest.raises(RuntimeError, match="decoder-call counts differ"):
        pool_rounds([rounds[0], other])

    ref = {"setup": {"repeats": 2, "rounds": 2}, "points": [p]}
    check = check_against(rounds[0]["points"], ref, "ref.json")
    assert check["ratios_compared"] == 3 and check["compared"] == 4  # three ratios and the physical limit
    assert check["inside"] == check["compared"]  # a round's median lies within the pool it belongs to
    narrow = copy.deepcopy(ref)
    narrow["points"][0]["ratios"]["grit/onegen"].update(min=-2.0, max=-1.0)
    assert check_against(rounds[0]["points"], narrow, "ref.json")["ratios_inside"] == 2
    moved = {"setup": {"repeats": 2}, "points": [dict(p, x=QLEN + 1)]}
    with pytest.raises(SystemExit, match="no point of this run is in the reference"):
        check_against(rounds[0]["points"], moved, "ref.json")

    argv = ["--quick", "--rounds", "3", "--out=/x", "--check", "r.json", "--repeats", "4", "--name", "q",
            "--record-check", "c.json"]
    assert round_args(argv) == ["--quick", "--repeats", "4"]


def test_a_recorded_check_is_appended_with_how_it_ran(tmp_path):
    import json

    from bench.efficiency import main, record_check

    check = {"reference": "r.json", "compared": 4, "inside": 3, "ratios_compared": 3, "ratios_inside": 3, "rows": []}
    report = {"setup": {"cpu": "x86_64", "cores": 2, "repeats": 3, "rounds": 1}, "check": check}
    f = tmp_path / "checks.json"
    record_check(str(f), report)
    record_check(str(f), report)
    record_check(None, report)  # not asked: nothing written
    runs = json.loads(f.read_text())["runs"]
    assert len(runs) == 2 and runs[0]["ratios_inside"] == 3 and runs[0]["repeats"] == 3 and "finished" in runs[0]
    with pytest.raises(SystemExit, match="--record-check needs --check"):
        main(["--quick", "--record-check", str(f)])
    with pytest.raises(SystemExit, match="--rounds must be between 1 and 20"):
        main(["--quick", "--rounds", "0"])
