"""NIL abstention for entity linking: a marked mention whose best candidate scores below a threshold is
left unlinked (NIL) instead of linked to the nearest entity of the table, which is what a retriever
always returns, however far it is.

The threshold is chosen on validation windows (`choose_threshold`): every distinct top-1 score of the
predicted mentions is a candidate, and the one with the best EL micro-F1 is kept (ties: the lowest, so
linking abstains as little as the data allows). Scoring is `score_linking`'s: a linked mention that is
not a gold InKB link (a wrong entity, or a span whose gold is NIL) is a false positive, an unlinked one
is neither a true nor a false positive. Abstaining can therefore only trade false positives against
true positives; the chosen threshold is the validation optimum of that trade, reported with the F1
without it.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from onegen_core.data.elevant import ElevantArticle
from onegen_core.evaluation.linking import PredictedMention, score_linking


def abstain(predictions: Mapping[str, Sequence[PredictedMention]],
            threshold: float | None) -> dict[str, list[PredictedMention]]:
    """The predictions with every mention whose top score is below `threshold` unlinked (its span and
    candidates kept); None = unchanged."""
    if threshold is None:
        return {k: list(v) for k, v in predictions.items()}
    return {k: [m if m.entity_id is None or (m.score is not None and m.score >= threshold)
                else dataclasses.replace(m, entity_id=None) for m in v]
            for k, v in predictions.items()}


def choose_threshold(articles: Sequence[ElevantArticle],
                     predictions: Mapping[str, Sequence[PredictedMention]]) -> dict:
    """The validation-optimal threshold and the curve it was read from:
    {"threshold", "f1", "f1_without", "precision", "recall", "abstained", "linked", "curve": [...]}.
    `threshold` None: no threshold beats linking every mention."""
    base = score_linking(articles, predictions).get("all", {}).get("el", {})
    scores = sorted({m.score for v in predictions.values() for m in v if m.entity_id is not None
                     and m.score is not None})
    linked = sum(m.entity_id is not None for v in predictions.values() for m in v)
    best = {"threshold": None, "f1": base.get("f1", 0.0), "precision": base.get("precision", 0.0),
            "recall": base.get("recall", 0.0), "abstained": 0}
    curve = []
    for t in scores[1:]:  # the lowest score abstains from nothing: that is `base`
        kept = abstain(predictions, t)
        el = score_linking(articles, kept).get("all", {}).get("el", {})
        n_abst = linked - sum(m.entity_id is not None for v in kept.values() for m in v)
        curve.append({"threshold": t, "f1": el.get("f1", 0.0), "abstained": n_abst})
        if el.get("f1", 0.0) > best["f1"]:
            best = {"threshold": t, "f1": el["f1"], "precision": el["precision"], "recall": el["recall"],
                    "abstained": n_abst}
    return {**best, "f1_without": base.get("f1", 0.0), "linked": linked, "curve": curve}


def abstention_scores(articles: Sequence[ElevantArticle], predictions: Mapping[str, Sequence[PredictedMention]],
                      threshold: float | None, source: str) -> dict:
    """Held-out links scored again with NIL abstention below `threshold` (from `read_threshold`: chosen on
    validation, never on these articles): {"threshold", "source", "linked_without", "abstained",
    "el": {bucket: EL scores}}; only threshold and source when there is none. The paper's figures link
    every mention; this is the served model's figure beside them."""
    out: dict = {"threshold": threshold, "source": source}
    if threshold is None:
        return out
    kept = abstain(predictions, threshold)
    out["linked_without"] = sum(m.entity_id is not None for v in predictions.values() for m in v)
    out["abstained"] = out["linked_without"] - sum(m.entity_id is not None for v in kept.values() for m in v)
    out["el"] = {b: s["el"] for b, s in score_linking(articles, kept).items()}
    return out


def read_threshold(path: str | Path, checkpoint_id: str) -> tuple[float | None, str]:
    """(the threshold the link_threshold stage chose on validation, where it comes from) when its file
    exists and was written for `checkpoint_id`; else (None, why): a threshold chosen for other weights
    says nothing about these."""
    path = Path(path)
    if not path.is_file():
        return None, f"none: {path} does not exist (run `dvc repro link_threshold`)"
    try:
        chosen = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"none: {path} is not JSON ({e})"
    if not isinstance(chosen, dict):
        return None, f"none: {path} holds no threshold record"
    if chosen.get("checkpoint_id") != checkpoint_id:
        return None, (f"none: {path} was chosen for checkpoint {chosen.get('checkpoint_id')}, not {checkpoint_id} "
                      "(re-run `dvc repro link_threshold`)")
    t = chosen.get("threshold")
    if t is None and chosen.get("reason"):
        return None, f"none: {path}: {chosen['reason']}"
    if t is not None and not isinstance(t, (int, float)):
        return None, f"none: {path}: threshold {t!r} is no number"
    source = f"{path} (validation EL F1 {chosen.get('f1_without', 0):.3f} -> {chosen.get('f1', 0):.3f})"
    return (float(t) if t is not None else None), source
