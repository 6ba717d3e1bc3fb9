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
