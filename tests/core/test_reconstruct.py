from __future__ import annotations

import pytest

from onegen_core.config import ReconstructConfig
from onegen_core.data import load_hotpotqa
from onegen_core.data.multihop import MultiHopRecord, Paragraph, SupportingFact
from onegen_core.method.segments import Retrieval, Text, TrainingExample
from onegen_core.method.tokens import (
    CON,
    FINAL_CLOSE,
    FINAL_OPEN,
    LOC_CLOSE,
    LOC_OPEN,
    MENTION_CLOSE,
    MENTION_OPEN,
    PARAGRAPH_OPEN,
)
from onegen_core.prepare.entity_linking import Mention, reconstruct_entity_linking
from onegen_core.prepare.multihop import Hop, hops_from_supporting_facts, reconstruct_multihop


def record() -> MultiHopRecord:
    return MultiHopRecord(
        id="r1",
        question="Who directed the film?",
        answer="Ann",
        supporting_facts=(SupportingFact("Film", 0), SupportingFact("Ann", 1), SupportingFact("Ann", 0)),
        context=(
            Paragraph("Noise", ("N0.", " N1.")),
            Paragraph("Ann", ("A0.", " A1.", " A2.")),
            Paragraph("Film", ("F0.", " F1.")),
        ),
        type="bridge",
        level="easy",
        evidences=(),
        source="hotpotqa",
    )


def test_hops_follow_supporting_facts():
    hops = hops_from_supporting_facts(record())
    assert hops == [Hop("Film", (0,)), Hop("Ann", (0, 1))]


def test_implicit_layout_and_labels():
    ex = reconstruct_multihop(record(), hops_from_supporting_facts(record()), ReconstructConfig(granularity="sentence"))
    kinds = [type(s).__name__ for s in ex.segments]
    assert kinds == ["Text", "Retrieval", "Text", "Retrieval", "Text", "Text"]
    assert ex.segments[0] == Text("The question is: Who directed the film?\n", generated=False)
    assert ex.segments[2].text.startswith(PARAGRAPH_OPEN + "Film: F0. F1.") and not ex.segments[2].generated
    assert ex.segments[-1] == Text(f"{FINAL_OPEN}Ann{FINAL_CLOSE}", generated=True)
    docs = {d.title: d for d in ex.documents}
    film, ann, noise = docs["Film"].id, docs["Ann"].id, docs["Noise"].id
    q0, q1 = ex.queries
    # App. G.1: every [RD] at or after the first supporting sentence has read it, so all are positives
    assert q0.positives == (f"{film}#0", f"{film}#1")
    # hop 0 must not treat hop 1's positives as negatives
    assert set(q0.negatives) == {f"{noise}#0", f"{noise}#1"}
    assert q1.positives == (f"{ann}#0", f"{ann}#1", f"{ann}#2")
    assert set(q1.negatives) == {f"{film}#0", f"{film}#1", f"{noise}#0", f"{noise}#1"}


def test_sentences_before_the_supporting_one_are_hard_negatives():
    rec = record()
    hops = [Hop("Film", (1,)), Hop("Ann", (2,))]
    ex = reconstruct_multihop(rec, hops, ReconstructConfig(granularity="sentence"))
    docs = {d.title: d.id for d in ex.documents}
    q0, q1 = ex.queries
    assert q0.positives == (f"{docs['Film']}#1",)
    assert f"{docs['Film']}#0" in q0.negatives  # before the supporting sentence: it has not read it
    assert q1.positives == (f"{docs['Ann']}#2",)
    assert {f"{docs['Ann']}#0", f"{docs['Ann']}#1"} <= set(q1.negatives)
    assert f"{docs['Ann']}#2" not in q0.negatives  # a later hop's positive is never a negative


def test_explicit_with_loc():
    hops = [Hop("Film", (0,), sub_question="Who made Film?", sub_answer="Ann"), Hop("Ann", (0,), "Where?", "X")]
    ex = reconstruct_multihop(record(), hops, ReconstructConfig(query_style="explicit", use_loc=True))
    assert ex.segments[1] == Text(f"{LOC_OPEN}Who made Film?{LOC_CLOSE}", generated=True)
    assert isinstance(ex.segments[2], Retrieval)
    assert ex.segments[4] == Text("Ann\n", generated=True)
    with pytest.raises(ValueError, match="no sub-question"):
        reconstruct_multihop(record(), hops_from_supporting_facts(record()), ReconstructConfig(query_style="explicit"))


def test_document_granularity():
    ex = reconstruct_multihop(record(), hops_from_supporting_facts(record()), ReconstructConfig(granularity="document"))
    film = next(d for d in ex.documents if d.title == "Film")
    assert film.units == ("F0. F1.",) and ex.queries[0].positives == (film.id,)


def test_real_hotpotqa_records_reconstruct(shared_data):
    recs = load_hotpotqa(shared_data / "hotpotqa" / "dev_distractor_sample.json")
    exs = [reconstruct_multihop(r, hops_from_supporting_facts(r), ReconstructConfig()) for r in recs]
    assert len(exs) == len(recs)
    assert all(len(e.queries) == len(set(r.supporting_titles())) for e, r in zip(exs, recs))
    assert all(TrainingExample.from_dict(e.to_dict()) == e for e in exs[:10])


def test_entity_linking_layout():
    text = "Paris is in France."
    kb = {"Q90": ("Paris", "capital of France"), "Q142": ("France", "country"), "Q1": ("Paris Hilton", "person")}
    ex = reconstruct_entity_linking("s1", text, [Mention(12, 18, "Q142"), Mention(0, 5, "Q90", ("Q1",))], kb)
    segs = ex.segments
    assert segs[0] == Text(text + "\n", generated=False)
    assert segs[1] == Text(f"{MENTION_OPEN}Paris{MENTION_CLOSE}", generated=True)
    assert segs[2] == Retrieval("m0") and segs[3] == Text(CON, generated=False)
    assert segs[4] == Text(f" is in {MENTION_OPEN}France{MENTION_CLOSE}", generated=True)
    assert segs[5] == Retrieval("m1") and segs[6] == Text(CON, generated=False)
    assert segs[7] == Text(".", generated=True)
    assert ex.queries[0].positives == ("Q90",) and ex.queries[0].negatives == ("Q1",)
    assert {d.id for d in ex.documents} == {"Q90", "Q142", "Q1"}


@pytest.mark.parametrize(
    "mentions, message",
    [
        ([Mention(0, 5, "Q90"), Mention(3, 8, "Q90")], "overlap"),
        ([Mention(0, 99, "Q90")], "outside the text"),
        ([Mention(0, 5, "Q404")], "absent from the KB"),
    ],
)
def test_entity_linking_errors(mentions, message):
    with pytest.raises(ValueError, match=message):
        reconstruct_entity_linking("s", "Paris is nice", mentions, {"Q90": ("Paris", "city")})


def test_pasted_paragraphs_are_not_negatives_when_off():
    """pasted_negatives false: the paragraph pasted before hop 1's [RQ] (hop 0's gold) is neither its
    positive nor its negative; the distractor stays a negative, hop 0 is unchanged."""
    hops = hops_from_supporting_facts(record())
    on = reconstruct_multihop(record(), hops, ReconstructConfig(granularity="sentence"))
    off = reconstruct_multihop(record(), hops, ReconstructConfig(granularity="sentence", pasted_negatives=False))
    docs = {d.title: d.id for d in off.documents}
    film, noise = docs["Film"], docs["Noise"]
    assert off.queries[0] == on.queries[0]
    assert off.queries[1].positives == on.queries[1].positives
    assert set(off.queries[1].negatives) == {f"{noise}#0", f"{noise}#1"}
    assert {f"{film}#0", f"{film}#1"} <= set(on.queries[1].negatives)
