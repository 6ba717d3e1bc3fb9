"""The evaluate stage's MLflow metric names (tasks.adapters.tracking.flat_metrics): the names the MLflow
views and the λr sweep compare runs by, so a renamed one silently empties a column."""
from __future__ import annotations

from tasks.adapters.tracking import COMPARED_COLUMNS, flat_metrics


def _prf(p: float, r: float, f1: float) -> dict[str, float]:
    return {"precision": p, "recall": r, "f1": f1, "tp": 1, "fp": 2, "fn": 3}


AGG = {"em": 0.5, "f1": 0.75, "recall_at_1_subquery": 0.25, "recall_at_1_question": 0, "unit_recall_at_1": 0.125,
       "misses": 1, "questions": 4, "misses_by_reason": {"eos": 1}}
RESULT = {
    "checkpoint_id": "ck",
    "multihop": {"hotpotqa": {"open": {"onegen": AGG}}},
    "entity_linking": {
        "systems": {"onegen": {"all": {"md": _prf(1, 0.5, 0.625), "el": _prf(0.5, 0.5, 0.5)},
                               "msnbc": {"ed": _prf(0.25, 1, 0.4)}},
                    "bm25": {"all": {"ed": _prf(0.1, 0.2, 0.3)}}},
        "elevant_rules": {"all": {"ner": _prf(0.9, 0.8, 0.85)}, "msnbc": {"el": _prf(0, 0, 0)}},
    },
}


def test_flat_metrics_names_and_values():
    assert flat_metrics(RESULT) == {
        "eval/hotpotqa/open/onegen/em": 0.5, "eval/hotpotqa/open/onegen/f1": 0.75,
        "eval/hotpotqa/open/onegen/recall_at_1_subquery": 0.25, "eval/hotpotqa/open/onegen/recall_at_1_question": 0.0,
        "eval/hotpotqa/open/onegen/unit_recall_at_1": 0.125, "eval/hotpotqa/open/onegen/misses": 1.0,
        "eval/el_elevant/onegen/ner_p": 0.9, "eval/el_elevant/onegen/ner_r": 0.8, "eval/el_elevant/onegen/ner_f1": 0.85,
        "eval/el_elevant/msnbc/onegen/el_p": 0.0, "eval/el_elevant/msnbc/onegen/el_r": 0.0,
        "eval/el_elevant/msnbc/onegen/el_f1": 0.0,
        "eval/el/onegen/md_p": 1.0, "eval/el/onegen/md_r": 0.5, "eval/el/onegen/md_f1": 0.625,
        "eval/el/onegen/el_p": 0.5, "eval/el/onegen/el_r": 0.5, "eval/el/onegen/el_f1": 0.5,
        "eval/el/msnbc/onegen/ed_p": 0.25, "eval/el/msnbc/onegen/ed_r": 1.0, "eval/el/msnbc/onegen/ed_f1": 0.4,
        "eval/el/bm25/ed_p": 0.1, "eval/el/bm25/ed_r": 0.2, "eval/el/bm25/ed_f1": 0.3,
    }


def test_the_compared_columns_are_metrics_the_evaluation_logs():
    names = {c.removeprefix("metrics.`").removesuffix("`") for c in COMPARED_COLUMNS if c.startswith("metrics.`eval/")}
    assert names == {"eval/hotpotqa/distractor/onegen/recall_at_1_subquery", "eval/hotpotqa/distractor/onegen/f1",
                     "eval/hotpotqa/distractor/onegen/em", "eval/hotpotqa/open/onegen/recall_at_1_subquery",
                     "eval/el/onegen/el_f1"}
    full = {**RESULT, "multihop": {"hotpotqa": {s: {"onegen": AGG} for s in ("distractor", "open")}}}
    assert names <= set(flat_metrics(full))


def test_a_result_without_entity_linking_logs_multihop_only():
    assert set(flat_metrics({"multihop": {}, "entity_linking": {}})) == set()
    assert len(flat_metrics({"multihop": RESULT["multihop"], "entity_linking": {}})) == 6
