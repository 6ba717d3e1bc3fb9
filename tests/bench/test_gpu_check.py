"""bench/gpu_check.py on a CPU with the tiny shape, so the script a GPU session runs cannot rot: its JSON's
structure and exact counts (never its timings or memory figures, which mean something only on a GPU)."""
from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from bench.gpu_check import main

    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    result = main(["--shape", "tiny", "--device", "cpu", "--budget-s", "3600", "--out", str(out)])  # no point skipped
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result


def test_training_step_rows(report):
    rows = {(r["mode"], r["precision"]): r for r in report["train_memory"]["rows"]}
    modes = {"full", "top_k"} | ({"lora"} if importlib.util.find_spec("peft") else set())
    assert {m for m, _ in rows} == modes and {p for _, p in rows} == {"bf16", "fp32-autocast"}
    for (mode, _), r in rows.items():
        assert not r["oom"] and r["loss"] > 0 and r["tokens"] > 0
        assert r["peak_gpu_bytes"] is None  # no GPU: no memory figure is made up
        if mode == "full":
            assert r["trainable_parameters"] == r["parameters"]
        else:  # top-K layers and LoRA train a part of the model
            assert 0 < r["trainable_parameters"] < r["parameters"]


def test_fig3_counts(report):
    points = report["fig3"]["points"]
    assert {p["setting"] for p in points} == {"a", "b"} and not report["fig3"]["skipped"]
    for p in points:
        c = p["counts"]
        assert c["onegen"]["searches"] == p["rounds"] and c["lower"]["searches"] == 0
        assert c["onegen"]["extra_calls_per_retrieval_vs_lower"] == 1.0  # the [RQ] step
        assert c["grit"]["extra_calls_per_retrieval_vs_lower"] == 2.0  # [RQ] step + the query's second pass
        # GRIT re-encodes the round's query and its [RQ] only, never the growing history
        assert c["grit"]["query_encoder_tokens"] == p["rounds"] * (p["query_tokens"] + 1)
        for name in ("pipeline_minilm", "pipeline_contriever"):
            assert c[name]["retriever_calls"] == p["rounds"] and c[name]["extra_calls_per_retrieval_vs_lower"] == 1.0
        assert set(p["ratios"]) >= {"onegen_over_lower", "grit_over_onegen"}
        assert len(p["physical_limit"]["ratio"]["values"]) == 2
    shares = {n: r["fraction_of_generator"] for n, r in report["retrievers"].items()}
    assert set(shares) == {"minilm", "contriever"} and all(v > 0 for v in shares.values())
