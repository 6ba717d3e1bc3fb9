"""The systems the evaluate stage compares: which run, how the baselines are wired to the generator,
the MiniLM unit vectors kept across runs, and the ED baseline's predictions."""
from __future__ import annotations

import numpy as np
import pytest

from onegen_core.data.elevant import ElevantArticle, ElevantLabel
from onegen_core.evaluation.linking import PredictedMention, gold_by_article
from onegen_core.inference.index import ExactIndex, UnitRecord
from tasks.adapters import eval_systems
from tasks.adapters.baselines import TextSearchBridge
from tasks.adapters.eval_systems import (
    MiniLMQueryEncoder,
    QueryText,
    System,
    ed_baseline,
    minilm_index,
    multihop_systems,
    system_names,
)

RECORDS = [UnitRecord("paris", "paris", "Paris", "capital of France", "capital of France"),
           UnitRecord("berlin", "berlin", "Berlin", "capital of Germany", "capital of Germany"),
           UnitRecord("obama", "obama", "", "Barack Obama, president", "Barack Obama, president")]


class FakeMiniLM:
    """MiniLM's interface: one 3-d vector per text (its length, and two constants); records each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.array([[len(t), 1.0, 2.0] for t in texts], np.float32)  # (n, 3)

    def encode_parts(self, parts):  # no length limit here: `fit` is tested on the real tokenizer
        return self.encode([f"{h} {t}".strip() for h, t in parts])


@pytest.mark.parametrize(("baselines", "sft", "names"), [
    ([], "", ["onegen"]),
    (["bm25", "minilm"], "", ["onegen", "minilm", "bm25"]),  # always in the report's order
    (["bm25"], "models/sft", ["onegen", "bm25", "sft"]),
])
def test_system_names_follow_the_settings(baselines, sft, names):
    assert system_names(baselines, sft) == names


def test_minilm_unit_vectors_are_kept_and_reused_while_the_units_are_the_same(tmp_path):
    enc = FakeMiniLM()
    first = minilm_index(enc, RECORDS, tmp_path)
    assert enc.calls == [["Paris: capital of France", "Berlin: capital of Germany", "Barack Obama, president"]]
    assert isinstance(first, ExactIndex) and first.checkpoint_id == "minilm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm_units.rd_context.npz"]  # no temporary left
    again = minilm_index(enc, RECORDS, tmp_path)
    assert len(enc.calls) == 1 and np.array_equal(again.vectors, first.vectors)
    minilm_index(enc, RECORDS[:2], tmp_path)  # other units: encoded again
    assert enc.calls[-1] == ["Paris: capital of France", "Berlin: capital of Germany"]
    minilm_index(enc, RECORDS, tmp_path, "unit")  # the other unit-text form is kept apart
    assert len(enc.calls) == 3 and (tmp_path / "minilm_units.unit.npz").is_file()


class PartsOf:
    """A `QueryText` stand-in: (question, what followed) of a row."""

    def parts(self, seq):
        return "q?", f"r{len(seq)}"


def test_the_minilm_query_encoder_encodes_the_rows_query_text():
    enc = FakeMiniLM()
    vec = MiniLMQueryEncoder(enc, PartsOf())(0, [5, 6, 7])
    assert enc.calls == [["q? r3"]] and vec.tolist() == [5.0, 1.0, 2.0]


def test_the_baselines_share_onegens_generator(tmp_path, monkeypatch):
    monkeypatch.setattr(eval_systems, "MiniLMEncoder", FakeMiniLM)
    onegen = System("onegen", "lm", "tok", "units", None, "ck")
    systems = multihop_systems(onegen, RECORDS, ["onegen", "minilm", "bm25"], "explicit", "", "float32", tmp_path)
    assert list(systems) == ["onegen", "minilm", "bm25"] and systems["onegen"] is onegen
    mini, bm25 = systems["minilm"], systems["bm25"]
    assert (mini.model, mini.tokenizer, mini.checkpoint_id, mini.index.checkpoint_id) == ("lm", "tok", None, "minilm")
    assert isinstance(mini.query_encoder, MiniLMQueryEncoder) and mini.query_encoder.text.style == "explicit"
    assert isinstance(bm25.index, TextSearchBridge) and bm25.query_encoder == bm25.index.query_encoder
    assert isinstance(bm25.index.to_text, QueryText) and bm25.index.to_text.tokenizer == "tok"
    assert (tmp_path / "minilm_units.rd_context.npz").is_file()
    only = multihop_systems(onegen, RECORDS, ["onegen"], "explicit", "", "float32", tmp_path / "none")
    assert list(only) == ["onegen"] and not (tmp_path / "none").exists()  # no baseline asked: nothing built


def test_ed_baseline_links_each_gold_mention_by_its_text():
    text = "Obama saw Berlin and Paris."
    labels = tuple(ElevantLabel(s, e, q, text[s:e], None, None, (), i)
                   for i, (s, e, q) in enumerate([(21, 26, "Q90"), (0, 5, "Q76"), (10, 16, "Q64")]))
    article = ElevantArticle(4, "", text, None, labels, "toy")

    class KB:
        def records(self):
            return RECORDS

    preds = ed_baseline("bm25", KB(), [article], gold_by_article([article]))
    assert [(m.start, m.end, m.entity_id) for m in preds["toy/4"]] == [(0, 5, "obama"), (10, 16, "berlin"),
                                                                       (21, 26, "paris")]
    assert all(isinstance(m, PredictedMention) and m.score > 0 for m in preds["toy/4"])
