"""Answer and linking metrics, as the benchmarks' official scripts define them.

Answers follow the HotpotQA evaluation script (`hotpot_evaluate_v1.py`, also used by 2WikiMultihopQA):
lower-case, drop ASCII punctuation (`string.punctuation` only: unicode punctuation such as "’" or "–"
is kept, exactly as the official script does), drop the articles a/an/the, collapse whitespace. F1 is
over whitespace tokens; when either side normalises to "yes", "no" or "noanswer" and they differ, F1 is
0 (no partial credit between "no" and "no way"). An empty prediction matches only an empty gold.

Linking is micro precision/recall/F1 over sets of (doc id, start, end, entity id) tuples (ELEVANT's and
GERBIL's InKB strong matching: a prediction counts only with the exact span and entity).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Collection, Hashable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)
_SPECIAL_ANSWERS = ("yes", "no", "noanswer")


def normalize_answer(s: str) -> str:
    """The official normalisation, steps in the official order: lower, punctuation, articles, spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_precision_recall(prediction: str, gold: str) -> tuple[float, float, float]:
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in _SPECIAL_ANSWERS or ref in _SPECIAL_ANSWERS) and pred != ref:
        return 0.0, 0.0, 0.0
    pred_tokens, ref_tokens = pred.split(), ref.split()
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    p, r = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * p * r / (p + r), p, r


def f1(prediction: str, gold: str) -> float:
    return f1_precision_recall(prediction, gold)[0]


def micro_prf(predicted: Collection[Hashable], gold: Collection[Hashable]) -> tuple[float, float, float]:
    """Micro P/R/F1 of two sets of tuples (duplicates collapse). With nothing predicted precision is 0,
    with nothing gold recall is 0 (sklearn's zero_division=0), so an empty system never scores 1."""
    pred, ref = set(predicted), set(gold)
    tp = len(pred & ref)
    p = tp / len(pred) if pred else 0.0
    r = tp / len(ref) if ref else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def prf_counts(predicted: Collection[Hashable], gold: Collection[Hashable]) -> dict[str, int]:
    """True positives, false positives and false negatives, to sum over files before computing micro scores."""
    pred, ref = set(predicted), set(gold)
    tp = len(pred & ref)
    return {"tp": tp, "fp": len(pred) - tp, "fn": len(ref) - tp}


def prf_from_counts(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
