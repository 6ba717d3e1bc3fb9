"""The core training run end to end on the shared HotpotQA sample, shrunk to seconds."""
from __future__ import annotations

import json

import pytest

from pathlib import Path

pytestmark = pytest.mark.slow
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_train_core_runs_and_writes_a_loadable_checkpoint(tmp_path, shared_data):
    from onegen_core.backbone import checkpoint_id, load_pretrained
    from onegen_core.config import load_params
    from tasks.train_core import run

    hp = shared_data / "hotpotqa"
    p = load_params(PARAMS, {
        "backbone.tiny.hidden_size": 64, "backbone.tiny.intermediate_size": 128, "backbone.tiny.num_layers": 2,
        "tokenizer.vocab_size": 2000, "tokenizer.corpus": [],
        "train.max_steps": 3, "train.batch_size": 2, "train.output_dir": str(tmp_path / "ckpt"),
        "core_run.train_file": "", "core_run.hotpotqa_train": [str(hp / "train_sample.json")],
        "core_run.hotpotqa_dev": str(hp / "dev_distractor_sample.json"), "core_run.dev_train_count": 140,
        "core_run.metrics_path": str(tmp_path / "m.json"),
    })
    result = run(p)
    assert result["steps"] == 3 and result["train_examples"] == 240 and result["held_out_examples"] == 10
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["held_out_after"]["queries"] == saved["held_out_before"]["queries"] > 0
    model, tok, ids = load_pretrained(str(tmp_path / "ckpt"))
    assert tok.convert_tokens_to_ids("[RQ]") == ids.rq and len(checkpoint_id(tmp_path / "ckpt")) == 16


def test_training_file_must_exist(tmp_path):
    from onegen_core.config import load_params
    from tasks.train_core import run

    p = load_params(PARAMS, {"core_run.train_file": str(tmp_path / "none.jsonl")})
    with pytest.raises(FileNotFoundError, match="dvc repro label"):
        run(p)
