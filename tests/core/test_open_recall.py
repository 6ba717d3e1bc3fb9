"""The open-pool teacher-forced measure: a query ranks every unit of the examples, minus its own
unlabelled units; a foreign unit that outscores its own positive is a miss there and not in the
own-candidate measure."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from onegen_core.evaluation.retrieval import _open_recall


def unit(*xs: float) -> torch.Tensor:
    return F.normalize(torch.tensor(xs, dtype=torch.float32), dim=0)


def test_foreign_units_compete_and_excluded_units_do_not():
    pool = {"a#0": unit(1, 0, 0), "a#1": unit(0, 1, 0), "b#0": unit(0.9, 0.1, 0), "c#0": unit(0, 0, 1)}
    docs = {"a#0": "a", "a#1": "a", "b#0": "b", "c#0": "c"}
    q1 = unit(0.9, 0.12, 0)  # nearest: b#0 (another example's unit), then a#0 (its positive)
    q2 = unit(0, 0.2, 1)  # nearest: c#0, which is excluded for it (its own unlabelled unit); then a#1
    out = _open_recall(pool, docs, [(q1, {"a#0"}, set()), (q2, {"a#1"}, {"c#0"})], ks=(1, 2))
    assert out["open_recall_at_1"] == 0.5  # q1 misses (b#0 first), q2 hits once c#0 is excluded
    assert out["open_recall_at_2"] == 1.0
    assert out["open_doc_recall_at_1"] == 0.5
    assert out["open_candidates"] == 4.0


def test_no_queries_is_nan_not_zero():
    out = _open_recall({}, {}, [], ks=(1, 5))
    assert math.isnan(out["open_recall_at_1"]) and math.isnan(out["open_recall_at_5"])
    assert out["open_candidates"] == 0.0
