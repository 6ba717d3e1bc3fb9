"""Labels and retrieval positions come from the segment structure, exactly."""
from __future__ import annotations

import pytest

from onegen_core.method.encoding import IGNORE_INDEX, SegmentTokenizer, encode_document, encode_example
from onegen_core.method.segments import Document, Query, Retrieval, Role, Text, TrainingExample
from onegen_core.method.tokens import PARAGRAPH_CLOSE, PARAGRAPH_OPEN, SpecialTokenIds
from tests.conftest import char_ids

G, C, R = int(Role.GEN), int(Role.CTX), int(Role.RET)
X = IGNORE_INDEX


def rag_example() -> TrainingExample:
    doc = Document("d", ("xy", "z"), granularity="sentence")
    return TrainingExample(
        id="ex",
        task="multihop",
        segments=(
            Text("ab", generated=False),
            Text("cd", generated=True),
            Retrieval("q"),
            Text(f"{PARAGRAPH_OPEN}xy{PARAGRAPH_CLOSE}", generated=False),
            Text("e", generated=True),
        ),
        queries=(Query("q", ("d#0",), ("d#1",)),),
        documents=(doc,),
    )


def test_roles_labels_and_positions_by_hand(char_tokenizer):
    tok = SegmentTokenizer(char_tokenizer)
    ids = SpecialTokenIds.from_tokenizer(char_tokenizer)
    a, b, c, d, x, y, e = (char_ids(char_tokenizer, ch)[0] for ch in "abcdxye")
    enc = encode_example(rag_example(), tok)
    po, pc = ids[PARAGRAPH_OPEN], ids[PARAGRAPH_CLOSE]
    #        a  b  c  d  [RQ]   <p> x  y  </p> e  <eos>
    assert enc.input_ids == [a, b, c, d, ids.rq, po, x, y, pc, e, ids.eos]
    # A position is GEN when the token after it is one the model writes: 'b' predicts the first
    # generated 'c'; 'd' predicts [RQ] (the model learns to emit it); [RQ] itself is RET and predicts
    # nothing; the pasted paragraph is context until its closing tag, which predicts 'e'; 'e' predicts EOS.
    assert enc.roles == [C, G, G, G, R, C, C, C, G, G, C]
    assert enc.labels == [X, c, d, ids.rq, X, X, X, X, e, ids.eos, X]
    assert enc.queries == [(4, "q")]
    assert enc.docs == []
    assert not enc.truncated


def test_exactly_gen_positions_carry_labels(char_tokenizer):
    enc = encode_example(rag_example(), SegmentTokenizer(char_tokenizer))
    for role, label in zip(enc.roles, enc.labels):
        assert (label != IGNORE_INDEX) == (role == int(Role.GEN))


def test_masks_come_from_structure_not_from_text(char_tokenizer):
    # The prompt and the answer are the same string: only the generated copy may be labelled.
    ex = TrainingExample("t", "x", (Text("abab", generated=False), Text("abab", generated=True)))
    enc = encode_example(ex, SegmentTokenizer(char_tokenizer))
    labelled = [i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX]
    # positions 3..7 predict tokens 4..8 (the generated "abab" and EOS)
    assert labelled == [3, 4, 5, 6, 7]


def test_training_text_ends_with_eos(char_tokenizer):
    tok = SegmentTokenizer(char_tokenizer)
    enc = encode_example(rag_example(), tok)
    assert enc.input_ids[-1] == tok.ids.eos
    assert enc.labels[-2] == tok.ids.eos  # the last generated position is trained to stop


def test_document_rd_after_each_sentence(char_tokenizer):
    tok = SegmentTokenizer(char_tokenizer)
    x, y, z, sp = (char_ids(char_tokenizer, ch)[0] for ch in "xyz ")
    enc = encode_document(Document("d", ("xy", "z"), granularity="sentence"), tok)
    assert enc.input_ids == [x, y, tok.ids.rd, sp, z, tok.ids.rd]
    assert enc.docs == [(2, "d#0"), (5, "d#1")]
    assert set(enc.labels) == {IGNORE_INDEX}  # documents carry no LM loss
    whole = encode_document(Document("d", ("xy", "z"), title="T"), tok)
    assert whole.docs == [(len(whole.input_ids) - 1, "d")]
    assert whole.input_ids[:3] == char_ids(char_tokenizer, "T: ")


def test_truncation_counts_cut_retrievals(char_tokenizer):
    tok = SegmentTokenizer(char_tokenizer)
    enc = encode_example(rag_example(), tok, max_length=4)
    assert enc.truncated and enc.dropped_queries == ["q"] and enc.queries == []
    assert enc.roles[-1] == int(Role.CTX)  # the last kept position has no next token to predict
    doc = encode_document(Document("d", ("xy", "z"), granularity="sentence"), tok, max_length=4)
    assert doc.docs == [(2, "d#0")] and doc.dropped_docs == ["d#1"]


@pytest.mark.parametrize("bad", ["has [RQ] inside", "has [RD] inside"])
def test_literal_retrieval_tokens_in_text_are_rejected(bad):
    with pytest.raises(ValueError, match="Retrieval segment"):
        TrainingExample("t", "x", (Text(bad, generated=True),))


def test_unknown_query_or_unit_is_rejected():
    with pytest.raises(ValueError, match="no labels"):
        TrainingExample("t", "x", (Retrieval("q"),))
    with pytest.raises(ValueError, match="unknown units"):
        TrainingExample("t", "x", (Retrieval("q"),), queries=(Query("q", ("nope",)),))


def test_json_round_trip():
    ex = rag_example()
    assert TrainingExample.from_dict(ex.to_dict()) == ex


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("segments"), "field 'segments' is missing"),
        (lambda d: d["segments"][1].update(generated="yes"), r"segments\[1\]: field 'generated' must be bool"),
        (lambda d: d["queries"][0].pop("positives"), r"queries\[0\]: field 'positives' is missing"),
    ],
)
def test_json_errors_name_the_field(mutate, message):
    d = rag_example().to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=message):
        TrainingExample.from_dict(d, where="train.jsonl:3")
