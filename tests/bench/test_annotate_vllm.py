"""bench/annotate_vllm.py's own logic (the vLLM server itself is run by hand: infra/vllm/README.md)."""
from __future__ import annotations

import argparse
import json

from bench.annotate_vllm import example_copies, stage_args, write_subset
from onegen_core.config import load_params
from onegen_core.data import load_hotpotqa
from tests.conftest import ROOT


def test_the_small_runs_inputs_are_what_prepare_writes(tmp_path, shared_data):
    params = load_params(ROOT / "params.yaml", {
        "prepare.hotpotqa_train": [str(shared_data / "hotpotqa" / "train_sample.json")],
        "prepare.hotpotqa_dev": str(shared_data / "hotpotqa" / "dev_distractor_sample.json")})
    records = write_subset(params, 5, 3, tmp_path)
    assert [r.id for r in load_hotpotqa(tmp_path / "prepared" / "multihop_train.jsonl")] == [r.id for r in records]
    held = load_hotpotqa(tmp_path / "prepared" / "hotpotqa_heldout.jsonl")
    dev = load_hotpotqa(shared_data / "hotpotqa" / "dev_distractor_sample.json")
    start = params.prepare.dev_train_count
    assert [r.id for r in held] == [r.id for r in dev[start:start + 3]]  # held-out questions, never trained on
    args = argparse.Namespace(port=8123, model="m", kill_concurrency=4, max_tokens=384, max_attempts=2,
                              prompt="fig13", structured=True)
    cmd = stage_args(tmp_path, "annotate_kill", args)
    assert cmd[1:3] == ["-m", "tasks.annotate"]
    assert "annotate.base_url=http://127.0.0.1:8123/v1" in cmd and "annotate.structured_output=true" in cmd
    assert f"annotate.out_dir={tmp_path / 'annotate_kill'}" in cmd


def test_example_copies_counts_steps_taken_word_for_word_from_the_figure(tmp_path):
    copied = {"sub_question": "Which country is the magazine Pick Me Up published in?", "doc_title": "A",
              "sub_answer": "x"}
    own = {"sub_question": "Who founded Alpha?", "doc_title": "B", "sub_answer": "Bob"}
    rows = [{"example_id": "1", "steps": [own, copied], "final_answer": "no"},
            {"example_id": "2", "steps": [own], "final_answer": "Bob"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert example_copies(path) == {"decompositions": 2, "with_a_step_copied_from_the_example": 1, "steps": 3,
                                    "steps_copied": 1}


def test_a_committed_result_names_paths_relative_to_the_project():
    from bench.annotate_vllm import project_relative

    assert project_relative(f'{{"log": "{ROOT}/runs/annotate_vllm/e2e_label.log"}}') == \
        '{"log": "runs/annotate_vllm/e2e_label.log"}'
