"""Self-RAG end to end through the label stage: records in the Self-RAG training format (a hand-made
fixture) become `selfrag` training examples with rank-window hard negatives; asking to train on
Self-RAG without such files is an error naming the missing setting."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "selfrag_train.jsonl"


def test_selfrag_tasks_without_files_is_a_named_error():
    from onegen_core.config import ConfigError, load_params

    with pytest.raises(ConfigError, match="label.selfrag"):
        load_params(ROOT / "params.yaml", {"train_data.tasks": ["selfrag"]})
    p = load_params(ROOT / "params.yaml", {"train_data.tasks": ["selfrag"], "label.selfrag": [str(FIXTURE)]})
    assert p.label.selfrag == [str(FIXTURE)]


def test_paper_selfrag_profile_names_its_files():
    from onegen_core.config import load_params

    p = load_params(ROOT / "params.yaml", {"profile": "paper-selfrag-llama2-7b"})
    assert p.train_data.tasks == ["selfrag"] and p.label.selfrag


@pytest.mark.slow
def test_label_stage_emits_selfrag_examples(tmp_path, shared_data):
    from onegen_core.config import load_params
    from onegen_core.method.segments import TrainingExample
    from onegen_core.training.dataset import load_examples
    from tasks import annotate, label, prepare

    hp = shared_data / "hotpotqa" / "train_sample.json"
    p = load_params(ROOT / "params.yaml", {
        "prepare.hotpotqa_train": [str(hp)], "prepare.hotpotqa_dev": "", "prepare.wiki2_eval": [],
        "prepare.elevant": [], "prepare.el_eval_benchmarks": [], "prepare.kb_passages": [],
        "prepare.kb_context_passages": [], "prepare.out_dir": str(tmp_path / "prepared"),
        "annotate.out_dir": str(tmp_path / "annotate"), "label.out_dir": str(tmp_path / "label"),
        "label.selfrag": [str(FIXTURE)], "label.selfrag_negative_window": [0.5, 1.0], "label.val_fraction": 0.0,
    })
    prepare.run(p.prepare)
    annotate.run(p.annotate, str(Path(p.prepare.out_dir) / "multihop_train.jsonl"))
    report = label.run(p)
    assert report["selfrag_examples"] == 8 and report["multihop_examples"] == 100
    # 8 records: 8 retrievals, one [Irrelevant] (no positive), one [No Retrieval] record (no [RQ])
    assert report["selfrag_queries"] == 8 and report["selfrag_queries_without_positive"] == 1
    exs = load_examples(tmp_path / "label" / "train.jsonl", ["selfrag"])
    assert len(exs) == 8 and all(isinstance(e, TrainingExample) and e.task == "selfrag" for e in exs)
    by_id = {e.id: e for e in exs}
    q = by_id["sr-1"].queries[0]
    assert q.positives == ("Paris@" + q.positives[0].split("@")[1],)
    # hard negatives come from the other passages of the files, never the positive itself
    assert 1 <= len(q.negatives) <= 4 and q.positives[0] not in q.negatives
    docs = {d.id for d in by_id["sr-1"].documents}
    assert set(q.negatives) <= docs
    line = json.loads((tmp_path / "label" / "train.jsonl").read_text().splitlines()[-1])
    assert line["task"] in {"selfrag", "multihop"}
