"""Answer metrics against the official HotpotQA script's definitions, and micro P/R/F1; expected
values are computed by hand (comments show the normalised strings)."""
from __future__ import annotations

import pytest

from onegen_core.evaluation.metrics import exact_match, f1, micro_prf, normalize_answer, prf_counts, prf_from_counts


@pytest.mark.parametrize(
    "pred, gold, em",
    [
        ("The Beatles!", "beatles", 1.0),  # "beatles" == "beatles"
        ("an apple", "Apple", 1.0),
        ("a  cat ", "the cat", 1.0),  # articles anywhere, whitespace collapsed
        ("theater", "ater", 0.0),  # "the" only as a whole word
        ("U.S.A.", "USA", 1.0),  # ASCII punctuation dropped without a space
        ("rock-and-roll", "rockandroll", 1.0),
        ("Café", "café", 1.0),  # lower-casing is unicode-aware
        ("don’t", "dont", 0.0),  # the curly apostrophe is not in string.punctuation: kept, as officially
        ("Zürich", "Zurich", 0.0),  # no accent folding in the official script
        ("Yes.", "yes", 1.0),
        ("", "Paris", 0.0),
        ("", "", 1.0),  # the official script: "" == ""
    ],
)
def test_exact_match_official_cases(pred, gold, em):
    assert exact_match(pred, gold) == em


def test_normalisation_order():
    # punctuation goes before articles: "the-end" -> "theend" keeps its letters; "(the) end" -> "end"
    assert normalize_answer("the-end") == "theend"
    assert normalize_answer("(The) End") == "end"


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("the big red dog", "red dog", 0.8),  # "big red dog" vs "red dog": p 2/3, r 1
        ("paris paris france", "Paris", 0.5),  # overlap counts multiplicity once: p 1/3, r 1
        ("Barack Obama", "Obama", 2 / 3),  # p 1/2, r 1
        ("no", "no way", 0.0),  # a yes/no/noanswer side that differs scores 0, not token overlap
        ("yes it is", "yes", 0.0),
        ("yes", "Yes!", 1.0),
        ("noanswer", "no answer", 0.0),
        ("", "Paris", 0.0),
        ("", "", 0.0),  # no tokens in common: 0, as officially (EM is 1 here)
        ("Zürich city", "Zurich city", 0.5),  # p 1/2, r 1/2
    ],
)
def test_f1_official_cases(pred, gold, expected):
    assert f1(pred, gold) == pytest.approx(expected)


def test_micro_prf_hand_computed():
    gold = {("d", 0, 5, "Q1"), ("d", 6, 9, "Q9")}
    pred = [("d", 0, 5, "Q1"), ("d", 6, 9, "Q2"), ("d", 10, 12, "Q3"), ("d", 0, 5, "Q1")]  # duplicate collapses
    p, r, f = micro_prf(pred, gold)
    assert (p, r) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert f == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # 0.4
    assert micro_prf([], gold) == (0.0, 0.0, 0.0)
    assert micro_prf(pred, []) == (0.0, 0.0, 0.0)
    assert micro_prf(gold, gold) == (1.0, 1.0, 1.0)


def test_counts_sum_to_micro_scores():
    a = prf_counts({1, 2, 3}, {1, 4})
    b = prf_counts({5}, {5, 6, 7})
    tp, fp, fn = (a[k] + b[k] for k in ("tp", "fp", "fn"))
    assert (tp, fp, fn) == (2, 2, 3)
    s = prf_from_counts(tp, fp, fn)
    assert s["precision"] == 0.5 and s["recall"] == 0.4 and s["f1"] == pytest.approx(4 / 9)
