"""The evaluate stage's result cache: the folder a key names (pinned, so caches already computed stay
found), what a piece holds on disk, and a piece computed once."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from onegen_core.config import EvaluateConfig, flatten
from onegen_core.evaluation.linking import PredictedMention
from tasks.adapters.result_cache import ResultCache, cache_key, mentions_from_json, mentions_to_json

KEY = {"checkpoint_id": "0123456789abcdef", "dtype": "float32", "query_style": "implicit",
       "settings": ["distractor", "open"], "max_questions": 0, "elevant": [], "path": Path("a/b")}


def test_the_folder_is_the_checkpoint_id_and_a_digest_of_the_key(tmp_path):
    # sha256 of the key's JSON (sorted keys, non-JSON values as str): changing it orphans every cache
    assert ResultCache(tmp_path, KEY).dir == tmp_path / "0123456789abcdef-69392791364e"
    assert ResultCache(tmp_path, dict(reversed(KEY.items()))).dir.name == "0123456789abcdef-69392791364e"
    assert ResultCache(tmp_path, {**KEY, "max_questions": 5}).dir.name != "0123456789abcdef-69392791364e"


def test_the_key_holds_every_evaluate_setting_but_where_outputs_go_and_where_they_are_computed():
    cfg = EvaluateConfig(max_questions=7)
    key = cache_key("ck", "bfloat16", "explicit", cfg)
    assert list(key)[:3] == ["checkpoint_id", "dtype", "query_style"]
    assert (key["checkpoint_id"], key["dtype"], key["query_style"], key["max_questions"]) == ("ck", "bfloat16",
                                                                                              "explicit", 7)
    assert set(key) - {"checkpoint_id", "dtype", "query_style"} == set(flatten(cfg)) - {"out_dir", "metrics_path",
                                                                                       "log_mlflow", "executor"}
    # a piece computed locally or on Ray is the same piece (tests/stages/test_evaluate_stage.py: equal results)
    moved = EvaluateConfig(max_questions=7, out_dir="elsewhere", metrics_path="m.json", log_mlflow=False,
                           executor="ray")
    assert cache_key("ck", "bfloat16", "explicit", moved) == key


def test_an_unsafe_checkpoint_id_never_becomes_a_folder(tmp_path):
    with pytest.raises(ValueError, match="not a safe path component"):
        ResultCache(tmp_path / "runs", {"checkpoint_id": "../../outside"})
    assert not (tmp_path / "runs").exists()


def test_pieces_are_indented_json_and_computed_once(tmp_path):
    cache = ResultCache(tmp_path, KEY)
    assert cache.get("el.link") is None
    assert cache.put("el.link", {"a": [1, 2], "p": Path("x")}) == {"a": [1, 2], "p": Path("x")}
    assert (cache.dir / "el.link.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "p": "x"\n}\n'
    calls = []

    def compute():
        calls.append(1)
        return [{"em": 1.0}]

    assert cache.get_or_put("multihop.x", compute) == [{"em": 1.0}]
    assert ResultCache(tmp_path, KEY).get_or_put("multihop.x", compute) == [{"em": 1.0}]  # a re-run reads it
    assert calls == [1] and cache.get("el.link") == {"a": [1, 2], "p": "x"}


def test_mentions_round_trip_through_json():
    preds = {"toy/7": [PredictedMention(0, 5, "Q90", 0.25, ["Q90", "Q1"]), PredictedMention(6, 9, None)]}
    data = mentions_to_json(preds)
    assert data == {"toy/7": [{"start": 0, "end": 5, "entity_id": "Q90", "score": 0.25, "candidates": ["Q90", "Q1"]},
                              {"start": 6, "end": 9, "entity_id": None, "score": None, "candidates": []}]}
    assert mentions_from_json(json.loads(json.dumps(data))) == preds
