"""bench/train_throughput.py on the real pretrained backbone, for a few steps: every recipe asked for
trains, is measured on validation (never held-out) examples, and lands in the JSON with its spread."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_recipes_train_and_report_throughput_recall_and_spread(tmp_path, shared_data):
    from bench.train_throughput import main
    from onegen_core.config import ReconstructConfig
    from onegen_core.data import load_hotpotqa
    from onegen_core.prepare.multihop import hops_from_supporting_facts, reconstruct_multihop

    recs = load_hotpotqa(shared_data / "hotpotqa" / "train_sample.json")[:6]
    exs = [reconstruct_multihop(r, hops_from_supporting_facts(r), ReconstructConfig(max_negative_paragraphs=1), 0)
           for r in recs]
    for name, part in (("train.jsonl", exs[:4]), ("val.jsonl", exs[4:])):
        (tmp_path / name).write_text("".join(json.dumps(e.to_dict()) + "\n" for e in part))
    out = main(["-S", f"train_data.train_file={tmp_path / 'train.jsonl'}", "-S", f"train_data.val_file={tmp_path / 'val.jsonl'}",
                "-S", "train_data.tasks=[multihop]", "-S", "train.batch_size=2", "-S", "train.max_length=384",
                "-S", "train.max_doc_length=128", "--minutes", "0.01", "--recipes", "full", "top4-fewer-docs",
                "--val-examples", "2", "--threads", "2", "--out", str(tmp_path / "metrics")])
    written = json.loads((tmp_path / "metrics" / "train_throughput.json").read_text())
    assert written["recipes"].keys() == out["recipes"].keys() == {"full", "top4-fewer-docs"}
    assert written["validation_examples"] == 2 and written["train_examples"] == 4
    full, top4 = written["recipes"]["full"], written["recipes"]["top4-fewer-docs"]
    for r in (full, top4):
        assert r["steps"] >= 1 and r["tokens"] > 0 and r["tokens_per_s"] > 0
        q = r["step_tokens_per_s_quartiles"]
        assert len(q) == 3 and q[0] <= q[1] <= q[2]
        assert 0.0 <= r["recall_at_1_after"] <= 1.0
    assert full["tokens_per_s_ratio_over_full"] == 1.0
    # top 4 of 30 layers train: far fewer trainable parameters, and the frozen layers' output is cached
    assert top4["trainable_parameters"] < full["trainable_parameters"] / 3 and top4["cache_sequences"] > 0
