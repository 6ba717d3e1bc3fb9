"""The held-out-format validation measure (bench/val_multihop.py): teacher-forced [RQ]s scored as
`evaluate` scores a retrieval — top-1 unit in a gold paragraph not pasted before — with hand-made
scores, and the query text a separate retriever gets at each [RQ]."""
from __future__ import annotations

import numpy as np
import pytest

from onegen_core.config import ReconstructConfig
from onegen_core.data.multihop import MultiHopRecord, Paragraph, SupportingFact
from onegen_core.evaluation.retrieval import HopQuery, hop_queries, hop_recall, with_context
from onegen_core.prepare.multihop import hops_from_supporting_facts, paragraph_document, reconstruct_multihop


def record() -> MultiHopRecord:
    return MultiHopRecord(
        id="r1", question="Who directed the film?", answer="Ann",
        supporting_facts=(SupportingFact("Film", 1), SupportingFact("Ann", 0)),
        context=(Paragraph("Noise", ("N0.", " N1.")), Paragraph("Ann", ("A0.", " A1.")),
                 Paragraph("Film", ("F0.", " F1.")), Paragraph("Far", ("X0.",))),
        type="bridge", level="easy", evidences=(), source="hotpotqa")


def example(max_negative_paragraphs: int = 1):
    rec = record()
    ex = reconstruct_multihop(rec, hops_from_supporting_facts(rec),
                              ReconstructConfig(granularity="sentence", max_negative_paragraphs=max_negative_paragraphs))
    return ex, {d.title: d.id for d in (paragraph_document(p, "sentence") for p in rec.context)}


def test_with_context_adds_every_paragraph_once():
    ex, ids = example(max_negative_paragraphs=0)
    full = with_context(ex, [paragraph_document(p, "sentence") for p in record().context])
    assert sorted(d.id for d in full.documents) == sorted(ids.values())
    assert full.queries == ex.queries and full.segments == ex.segments


def test_hop_queries_carry_history_and_remaining_gold():
    ex, ids = example()
    q0, q1 = hop_queries(ex)
    assert (q0.hop, q1.hop) == (0, 1)
    assert q0.text == "Who directed the film?"
    assert q0.gold == {ids["Film"], ids["Ann"]} and not q0.pasted
    # the second [RQ] has read the pasted Film paragraph; a separate retriever gets the same text
    assert q1.text == "Who directed the film? Film: F0. F1."
    assert q1.pasted == {ids["Film"]} and q1.gold == {ids["Ann"]}


def test_hop_recall_scores_like_evaluate():
    docs = ["film", "film", "ann", "noise", "far"]
    qs = [HopQuery("e", 0, "", frozenset({"film", "ann", "noise"}), frozenset(), frozenset({"film", "ann"})),
          HopQuery("e", 1, "", frozenset({"film", "ann", "noise"}), frozenset({"film"}), frozenset({"ann"}))]
    scores = np.array([[0.1, 0.2, 0.9, 0.3, 0.0],   # hop 0: the later hop's gold first — a hit
                       [0.9, 0.9, 0.2, 0.1, 0.95]])  # hop 1: pasted film excluded; open: "far" wins
    d = hop_recall(qs, scores, docs, "distractor")
    assert d == {"recall_at_1": 1.0, "recall_at_1_first_rq": 1.0, "recall_at_1_later_rq": 1.0, "queries": 2.0}
    o = hop_recall(qs, scores, docs, "open")
    assert o["recall_at_1"] == 0.5 and o["recall_at_1_later_rq"] == 0.0
    with pytest.raises(ValueError, match="setting"):
        hop_recall(qs, scores, docs, "closed")
