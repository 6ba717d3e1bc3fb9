"""Multi-hop scoring: answer extraction, Recall@1 per sub-query and per question, and misses that stay
in the denominator with their reason."""
from __future__ import annotations

import numpy as np
import pytest

from onegen_core.data.multihop import MultiHopRecord, Paragraph, SupportingFact
from onegen_core.evaluation.multihop import (
    aggregate,
    evaluate_multihop,
    final_answer,
    gold_of,
    held_out_questions,
    pipeline_query_text,
    questions_missing_from_index,
    score_example,
)
from onegen_core.inference.generation import GenerationResult, RetrievalEvent, RetrievalPolicy
from onegen_core.prepare.multihop import paragraph_id

PARAS = (Paragraph("A", ("Alpha is a city.", " It is big.")), Paragraph("B", ("Beta is a river.",)),
         Paragraph("C", ("Gamma is a song.",)))
RECORD = MultiHopRecord(id="q1", question="Where is Alpha?", answer="the City of Alpha", type="bridge",
                        supporting_facts=(SupportingFact("A", 1), SupportingFact("B", 0)), context=PARAS,
                        level="hard", evidences=(), source="hotpotqa")
DOC = {p.title: paragraph_id(p) for p in PARAS}


def unit_doc(uid: str) -> str:
    return uid.split("#")[0]


def result(text: str, tops: list[str | None], finish: str = "eos") -> GenerationResult:
    events = [RetrievalEvent(i, i, [t] if t else [], [0.5] if t else []) for i, t in enumerate(tops)]
    return GenerationResult([], [], text, events, np.zeros((len(tops), 4), np.float32), finish)


def test_final_answer_parsing():
    assert final_answer("[RQ]<paragraph>x</paragraph><FINAL-ANSWER> Paris </FINAL-ANSWER>") == "Paris"
    assert final_answer("<FINAL-ANSWER>a</FINAL-ANSWER><FINAL-ANSWER>b</FINAL-ANSWER>") == "b"
    assert final_answer("<FINAL-ANSWER>Paris") is None  # never closed
    assert final_answer("no tag at all") is None


def test_gold_ids_match_the_index_ids():
    g = gold_of(RECORD)
    assert g.docs == {DOC["A"], DOC["B"]}
    assert g.units == {f"{DOC['A']}#1", f"{DOC['B']}#0"}
    assert g.candidates == set(DOC.values())


def test_questions_missing_from_index_name_those_with_an_absent_paragraph():
    other = MultiHopRecord(id="q2", question="?", answer="a", type="bridge", supporting_facts=(), level=None,
                           context=PARAS[:1], evidences=(), source="hotpotqa")
    assert questions_missing_from_index([RECORD, other], set(DOC.values())) == []
    assert questions_missing_from_index([RECORD, other], {DOC["A"], DOC["B"]}) == ["q1"]  # C is absent
    assert questions_missing_from_index([RECORD, other], set()) == ["q1", "q2"]


@pytest.mark.parametrize("limit", [0, 1, 5])
def test_held_out_questions_read_each_datasets_form(tmp_path, limit):
    import dataclasses
    import json

    from onegen_core.data.multihop import record_to_dict

    hot = tmp_path / "hot.jsonl"
    hot.write_text("".join(json.dumps(record_to_dict(dataclasses.replace(RECORD, id=f"q{i}"))) + "\n"
                           for i in range(3)))
    wiki = dataclasses.replace(RECORD, source="2wiki", level=None, evidences=(("Alpha", "is", "city"),))
    two = tmp_path / "2wiki.jsonl"
    two.write_text(json.dumps(record_to_dict(wiki)) + "\n")
    assert [r.id for r in held_out_questions(str(hot), "hotpotqa", limit)] == ["q0", "q1", "q2"][:limit or 3]
    assert held_out_questions(str(two), "2wiki", limit)[0].evidences == (("Alpha", "is", "city"),)


def test_hits_are_distinct_gold_paragraphs():
    text = "<FINAL-ANSWER>city of alpha</FINAL-ANSWER>"
    both = score_example(RECORD, result(text, [f"{DOC['A']}#1", f"{DOC['B']}#0"]), unit_doc)
    assert both["em"] == 1.0 and both["question_retrieved"] and both["subquery_hits"] == 2
    assert both["unit_hits"] == 2 and both["miss_reason"] is None
    twice = score_example(RECORD, result(text, [f"{DOC['A']}#0", f"{DOC['A']}#1"]), unit_doc)
    assert twice["subquery_hits"] == 1 and not twice["question_retrieved"]  # the same paragraph twice
    assert twice["unit_hits"] == 1  # only A#1 is a supporting sentence
    short = score_example(RECORD, result(text, [f"{DOC['B']}#0"]), unit_doc)
    assert short["subquery_slots"] == 2 and short["subquery_hits"] == 1  # the skipped hop is a miss
    extra = score_example(RECORD, result(text, [f"{DOC['A']}#1", f"{DOC['B']}#0", f"{DOC['C']}#0"]), unit_doc)
    assert extra["subquery_slots"] == 3 and not extra["question_retrieved"]


def test_misses_score_zero_and_are_counted_by_reason():
    good = "<FINAL-ANSWER>City of Alpha</FINAL-ANSWER>"
    rows = [
        score_example(RECORD, result(good, [f"{DOC['A']}#1", f"{DOC['B']}#0"]), unit_doc),
        score_example(RECORD, result("<FINAL-ANSWER>City of Alpha", [f"{DOC['A']}#1"], "length"), unit_doc),
        score_example(RECORD, result("", [f"{DOC['A']}#1"] * 5, "retrieval_cap"), unit_doc),
        score_example(RECORD, result(good, [None]), unit_doc),  # a retrieval that found nothing
        score_example(RECORD, result("Alpha", [], "eos"), unit_doc),
    ]
    assert [r["miss_reason"] for r in rows] == [None, "never_closed", "retrieval_cap", "nothing_retrievable",
                                                "no_final_answer"]
    assert all(r["em"] == 0.0 and r["f1"] == 0.0 for r in rows[1:])
    agg = aggregate(rows)
    assert agg["questions"] == 5 and agg["em"] == pytest.approx(1 / 5)
    assert agg["misses"] == 4 and agg["misses_by_reason"]["retrieval_cap"] == 1
    assert agg["recall_at_1_question"] == pytest.approx(1 / 5)
    # slots: 2 + 2 + 5 + 2 + 2; hits: 2 + 1 + 1 (A once) + 0 + 0
    assert agg["recall_at_1_subquery"] == pytest.approx(4 / 13)


def test_pipeline_query_text_reads_what_the_rq_has_read():
    assert pipeline_query_text("Q?", "[RQ]") == "Q?"
    cont = "[RQ]<paragraph>A: x</paragraph>Who wrote it?[RQ]"
    # implicit: the question plus everything pasted or generated since (the [RQ] has read it all)
    assert pipeline_query_text("Q?", cont) == "Q? A: x Who wrote it?"
    # explicit: the sub-question written since the last passage
    assert pipeline_query_text("Q?", cont, "explicit") == "Who wrote it?"
    assert pipeline_query_text("Q?", "[RQ]", "explicit") == "Q?"


def test_query_text_of_skips_the_chat_template(char_tokenizer):
    from onegen_core.evaluation.multihop import query_text_of
    from onegen_core.method.encoding import SegmentTokenizer

    tok = SegmentTokenizer(char_tokenizer)
    ids = tok.prompt("The question is: Who?\n") + tok("[RQ]<paragraph>T: body</paragraph>[RQ]")
    assert query_text_of(char_tokenizer, ids) == "Who? T: body"


def test_chat_template_wraps_the_prompt_in_training_and_inference(char_tokenizer):
    import copy

    from onegen_core.method.encoding import SegmentTokenizer, encode_example
    from onegen_core.method.segments import Text, TrainingExample

    tok = copy.deepcopy(char_tokenizer)
    tok.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    st = SegmentTokenizer(tok)
    assert st.chat == ("<u>", "</u><a>")
    ex = TrainingExample("e", "t", (Text("Q\n", False), Text("ans", True)))
    enc = encode_example(ex, st)
    prompt = st.prompt("Q\n")
    assert tok.decode(prompt) == "<u>Q\n</u><a>" and enc.input_ids[:len(prompt)] == prompt
    # the model learns the answer right after the assistant header, then EOS
    assert tok.decode(enc.input_ids[len(prompt):-1]) == "ans" and enc.labels[len(prompt) - 1] == enc.input_ids[len(prompt)]
    plain = encode_example(ex, SegmentTokenizer(char_tokenizer))
    assert char_tokenizer.decode(plain.input_ids[:-1]) == "Q\nans"


def test_end_to_end_rows_keep_every_question(char_tokenizer, tiny_lm):
    """An untrained model: whatever it generates, every question yields exactly one scored row."""
    from onegen_core.config import LossConfig
    from onegen_core.inference.document_encoding import encode_documents
    from onegen_core.inference.index import ExactIndex
    from onegen_core.method.collator import OneGenCollator
    from onegen_core.method.model import OneGenModel
    from onegen_core.prepare.documents import documents_from_multihop

    tiny_lm.eval()
    docs = documents_from_multihop([RECORD], "sentence")
    recs, vecs = [], []
    for r, v in encode_documents(OneGenModel(tiny_lm, LossConfig()), OneGenCollator(char_tokenizer, 256), docs):
        recs += r
        vecs.append(v)
    index = ExactIndex(recs, np.concatenate(vecs), "ck")
    records = [RECORD, MultiHopRecord(**{**RECORD.__dict__, "id": "q2", "question": "Why?"})]
    rows, agg = evaluate_multihop(tiny_lm, char_tokenizer, records, index, "distractor",
                                  RetrievalPolicy(max_new_tokens=12, max_retrievals=2), unit_doc, batch_size=2)
    assert [r["id"] for r in rows] == ["q1", "q2"] and agg["questions"] == 2
    assert agg["misses"] == sum(1 for r in rows if r["miss_reason"])
    for r in rows:
        assert all(x["doc"] in DOC.values() for x in r["retrievals"])  # distractor: own paragraphs only
    with pytest.raises(ValueError, match="setting"):
        evaluate_multihop(tiny_lm, char_tokenizer, records, index, "closed-book", RetrievalPolicy(), unit_doc)
