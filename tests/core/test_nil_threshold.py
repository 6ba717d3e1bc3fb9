"""NIL abstention (onegen_core/evaluation/nil_threshold.py): the threshold chosen on validation is the
best EL micro-F1 over the predicted scores, abstaining only trades false positives against true ones,
and nothing but the entity of a mention below the threshold changes."""
from __future__ import annotations

from onegen_core.data.elevant import ElevantArticle, ElevantLabel
from onegen_core.evaluation.linking import PredictedMention, article_key, score_linking
from onegen_core.evaluation.nil_threshold import abstain, choose_threshold


def _article(labels: list[tuple[int, int, str]]) -> ElevantArticle:
    text = "a" * 100
    lbs = tuple(ElevantLabel(span_start=s, span_end=e, entity_id=eid, name="x", type="OTHER", parent=None,
                             children=(), id=i) for i, (s, e, eid) in enumerate(labels))
    return ElevantArticle(id=1, title="t", text=text, evaluation_span=None, labels=lbs, benchmark="b")


def test_the_chosen_threshold_drops_the_low_scoring_wrong_links_and_is_the_validation_optimum():
    art = _article([(0, 5, "Q1"), (10, 15, "Q2"), (20, 25, "Q3")])
    key = article_key(art)
    preds = {key: [PredictedMention(0, 5, "Q1", 0.9), PredictedMention(10, 15, "Q2", 0.7),
                   PredictedMention(20, 25, "Q9", 0.3),  # wrong entity, low score
                   PredictedMention(30, 35, "Q8", 0.2)]}  # a span with no gold: a false positive
    chosen = choose_threshold([art], preds)
    assert chosen["threshold"] == 0.7  # above .3 and .2, keeping both right links
    assert chosen["f1"] == 0.8 and chosen["precision"] == 1.0 and round(chosen["recall"], 4) == 0.6667
    assert round(chosen["f1_without"], 4) == 0.5714 and chosen["abstained"] == 2 and chosen["linked"] == 4
    # every point of the curve is at most the chosen F1
    assert max(p["f1"] for p in chosen["curve"]) == chosen["f1"]
    kept = abstain(preds, chosen["threshold"])[key]
    assert [m.entity_id for m in kept] == ["Q1", "Q2", None, None]
    assert [(m.start, m.end, m.score) for m in kept] == [(m.start, m.end, m.score) for m in preds[key]]
    assert score_linking([art], abstain(preds, None)) == score_linking([art], preds)


def test_no_threshold_when_abstaining_never_helps():
    art = _article([(0, 5, "Q1"), (10, 15, "Q2")])
    key = article_key(art)
    preds = {key: [PredictedMention(0, 5, "Q1", 0.2), PredictedMention(10, 15, "Q2", 0.8)]}
    chosen = choose_threshold([art], preds)
    assert chosen["threshold"] is None and chosen["f1"] == chosen["f1_without"] == 1.0 and chosen["abstained"] == 0


def test_the_threshold_file_is_read_only_for_its_own_checkpoint(tmp_path):
    """`read_threshold` (serving's `auto` and the evaluate stage's NIL figures): the stage's choice for this
    checkpoint, else None with the reason."""
    import json

    from onegen_core.evaluation.nil_threshold import read_threshold

    f = tmp_path / "link_threshold.json"
    t, why = read_threshold(f, "ck")
    assert t is None and "does not exist" in why and "dvc repro link_threshold" in why
    f.write_text("{not json")
    assert read_threshold(f, "ck")[0] is None and "is not JSON" in read_threshold(f, "ck")[1]
    f.write_text(json.dumps({"checkpoint_id": "other", "threshold": 0.5}))
    t, why = read_threshold(f, "ck")
    assert t is None and "chosen for checkpoint other, not ck" in why
    f.write_text(json.dumps({"checkpoint_id": "ck", "threshold": 0.5, "f1_without": 0.3, "f1": 0.35}))
    t, why = read_threshold(f, "ck")
    assert t == 0.5 and "validation EL F1 0.300 -> 0.350" in why
    f.write_text(json.dumps({"checkpoint_id": "ck", "threshold": None, "reason": "no windows"}))
    assert read_threshold(f, "ck") == (None, f"none: {f}: no windows")
    f.write_text(json.dumps({"checkpoint_id": "ck", "threshold": "high"}))
    assert read_threshold(f, "ck")[0] is None and "is no number" in read_threshold(f, "ck")[1]


def test_held_out_links_are_scored_again_with_the_threshold():
    """`abstention_scores` (the evaluate stage's `nil_abstention`): the same links, those below the
    validation threshold unlinked, scored as the paper's figures are; none without a threshold."""
    from onegen_core.evaluation.nil_threshold import abstention_scores

    art = _article([(0, 5, "Q1"), (10, 15, "Q2"), (20, 25, "Q3")])
    preds = {article_key(art): [PredictedMention(0, 5, "Q1", 0.9), PredictedMention(10, 15, "Q2", 0.7),
                                PredictedMention(20, 25, "Q9", 0.3)]}
    assert abstention_scores([art], preds, None, "none: why") == {"threshold": None, "source": "none: why"}
    out = abstention_scores([art], preds, 0.5, "file")
    assert out["threshold"] == 0.5 and out["abstained"] == 1 and out["linked_without"] == 3
    el = out["el"]["all"]
    assert (el["tp"], el["fp"], el["fn"]) == (2, 0, 1) and el["precision"] == 1.0
    assert score_linking([art], preds)["all"]["el"]["fp"] == 1  # without abstention the wrong link counts
