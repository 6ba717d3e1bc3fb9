"""Self-RAG: the strict loader (onegen_core.data.selfrag) and the reconstruction into OneGen examples
(onegen_core.prepare.selfrag).

No real Self-RAG file is available here: the fixtures follow the structure that
AkariAsai/self-rag `data_creation/generator/postprocess_data.py` writes:
`[Retrieval]<paragraph>{title}\\n{text}</paragraph>[Relevant]{sentence}{support}` or `...[Irrelevant]{sentence}`,
`[No Retrieval]{sentence}`, `[Continue to Use Evidence]{sentence}`, then `[Utility:k]`.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from onegen_core.data import selfrag as fmt
from onegen_core.data.errors import DataError
from onegen_core.data.selfrag import (
    SelfRagExample,
    SelfRagParagraph,
    SelfRagText,
    SelfRagToken,
    load_selfrag,
    load_selfrag_with_report,
    parse_selfrag_output,
)
from onegen_core.method import tokens
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.encoding import IGNORE_INDEX, SegmentTokenizer, encode_example
from onegen_core.method.segments import Query, Retrieval, Role, Text, TrainingExample
from onegen_core.prepare.selfrag import (
    corpus_passages,
    distinct_ids,
    passage_document,
    passage_id,
    reconstruct_selfrag,
    reconstruct_with_negatives,
    selfrag_prompt,
)
from onegen_core.prepare.skips import Skips
from tests.conftest import char_ids
from tests.core.conftest import write_lines

P_PARIS = "Paris\nParis is the capital of France."
P_LYON = "Lyon\nLyon is a city."
RETRIEVED = (
    f"[Retrieval]<paragraph>{P_PARIS}</paragraph>[Relevant]Paris is the capital.[Fully supported]"
    f"[Retrieval]<paragraph>{P_LYON}</paragraph>[Irrelevant]It has 2M people [1].[Utility:4]"
)
NO_RETRIEVAL = "[No Retrieval]Sure, here is a list: arr[i] for i in [1, 2].[Utility:5]"
MIXED = (
    "Intro. [Retrieval]<paragraph>T\nBody.</paragraph>[Relevant]One.[Partially supported]"
    "[Continue to Use Evidence]Two.[No Retrieval]Three.[Utility:3]"
)


def record(record_id: Any = "flan_1", output: str = RETRIEVED, **fields: Any) -> dict[str, Any]:
    data = {"instruction": "What is the capital of France?", "input": "", "output": output,
            "id": record_id, "dataset_name": "flan_v2"}
    data.update(fields)
    return data



def example(output: str = RETRIEVED, instruction: str = "Q?", input_text: str = "") -> SelfRagExample:
    return SelfRagExample("e1", instruction, input_text, parse_selfrag_output(output), "flan_v2")


# --------------------------------------------------------------------------- parsing


def test_markup_matches_onegen_tokens():
    assert (fmt.PARAGRAPH_OPEN, fmt.PARAGRAPH_CLOSE) == (tokens.PARAGRAPH_OPEN, tokens.PARAGRAPH_CLOSE)


def test_parse_retrieved_output():
    assert parse_selfrag_output(RETRIEVED) == (
        SelfRagToken("[Retrieval]"),
        SelfRagParagraph(P_PARIS, "[Relevant]", "[Fully supported]"),
        SelfRagText("Paris is the capital."),
        SelfRagToken("[Fully supported]"),
        SelfRagToken("[Retrieval]"),
        SelfRagParagraph(P_LYON, "[Irrelevant]"),
        SelfRagText("It has 2M people [1]."),
        SelfRagToken("[Utility:4]"),
    )
    paris = parse_selfrag_output(RETRIEVED)[1]
    assert (paris.title, paris.body, paris.is_relevant) == ("Paris", "Paris is the capital of France.", True)


@pytest.mark.parametrize(
    "output", [RETRIEVED, NO_RETRIEVAL, MIXED, "plain answer", "[Retrieval] <paragraph>x</paragraph>[Irrelevant]"]
)
def test_segments_spell_the_output(output):
    ex = example(output)
    assert ex.output() == output


@pytest.mark.parametrize("output, utility", [(RETRIEVED, 4), (NO_RETRIEVAL, 5), (MIXED, 3), ("x", None)])
def test_utility(output, utility):
    assert example(output).utility == utility


def test_ordinary_brackets_are_text():
    segs = parse_selfrag_output(NO_RETRIEVAL)
    assert segs[1] == SelfRagText("Sure, here is a list: arr[i] for i in [1, 2].")


def test_support_token_kinds():
    kinds = [s.kind for s in parse_selfrag_output(MIXED) if isinstance(s, SelfRagToken)]
    assert kinds == ["retrieval", "support", "retrieval", "retrieval", "utility"]


BAD_OUTPUTS = {
    "paragraph without [Retrieval]": ("<paragraph>x</paragraph>[Relevant]a", "not preceded by [Retrieval]"),
    "paragraph after [No Retrieval]": ("[No Retrieval]<paragraph>x</paragraph>[Relevant]a", "not preceded"),
    "unclosed paragraph": ("[Retrieval]<paragraph>x[Relevant]a", "not closed"),
    "nested paragraph": ("[Retrieval]<paragraph>x<paragraph>y</paragraph>[Relevant]", "not closed"),
    "stray close tag": ("a</paragraph>b", "without an opening tag"),
    "upper-case tag": ("[Retrieval]<Paragraph>x</Paragraph>[Relevant]", "lower-case"),
    "empty paragraph": ("[Retrieval]<paragraph> </paragraph>[Relevant]a", "empty paragraph"),
    "[Retrieval] without passage": ("[Retrieval]Paris.[Utility:5]", "not followed by <paragraph>"),
    "[Retrieval] at the end": ("a[Retrieval]", "not followed by <paragraph>"),
    "no relevance after passage": ("[Retrieval]<paragraph>x</paragraph>a", "not followed by [Relevant]"),
    "relevance out of place": ("[No Retrieval]a[Relevant]", "does not follow"),
    "support without passage": ("[No Retrieval]a[Fully supported]", "does not close a sentence"),
    "support after irrelevant": ("[Retrieval]<paragraph>x</paragraph>[Irrelevant]a[Fully supported]", "does not close"),
    "two supports": ("[Retrieval]<paragraph>x</paragraph>[Relevant]a[Fully supported][Partially supported]",
                     "does not close"),
    "token after utility": ("a[Utility:5][No Retrieval]b", "must come last"),
    "utility out of range": ("a[Utility:6]", "unknown reflection token '[Utility:6]'"),
    "misspelt decision": ("[Retrieve]a", "unknown reflection token"),
    "wrong case": ("[no retrieval]a", "unknown reflection token"),
    "wrong support": ("[Retrieval]<paragraph>x</paragraph>[Relevant]a[No Support]", "unknown reflection token"),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_malformed_output_is_a_located_data_error(tmp_path, case):
    output, message = BAD_OUTPUTS[case]
    path = write_lines(tmp_path / "train.jsonl", [record("ok"), record("bad_1", output)])
    with pytest.raises(DataError) as info:
        load_selfrag(path)
    err = info.value
    assert (err.file, err.record, err.field) == (str(path), "line 2 (id bad_1)", "output")
    assert message in err.message and "char " in err.message
    kept, errors = load_selfrag_with_report(path)
    assert [e.id for e in kept] == ["ok"] and len(errors) == 1


# --------------------------------------------------------------------------- loading


def test_json_array_and_jsonl_load_the_same(tmp_path):
    records = [record("a"), record("b", NO_RETRIEVAL, input="ctx"), record(7, MIXED)]
    array = tmp_path / "train.json"
    array.write_text(json.dumps(records, indent=1), encoding="utf-8")
    lines = write_lines(tmp_path / "train.jsonl", records)
    loaded = load_selfrag(array)
    assert loaded == load_selfrag(lines)
    assert [(e.id, e.input, e.dataset_name) for e in loaded] == [("a", "", "flan_v2"), ("b", "ctx", "flan_v2"),
                                                                  ("7", "", "flan_v2")]
    assert [e.output() for e in loaded] == [RETRIEVED, NO_RETRIEVAL, MIXED]


def test_optional_fields(tmp_path):
    rec = {"instruction": "I", "output": "[No Retrieval]a[Utility:5]"}
    [ex] = load_selfrag(write_lines(tmp_path / "t.jsonl", [rec]))
    assert (ex.id, ex.input, ex.dataset_name) == ("line 1", "", None)


RECORD_CORRUPTIONS = {
    "missing instruction": ({"output": "a", "id": "x"}, "instruction"),
    "blank instruction": (record("x", instruction=" "), "instruction"),
    "missing output": ({"instruction": "I", "id": "x"}, "output"),
    "output not a string": (record("x", output=["a"]), "output"),
    "input not a string": (record("x", input=3), "input"),
    "id a list": (record(["x"]), "id"),
    "dataset_name a number": (record("x", dataset_name=1), "dataset_name"),
    "not an object": ("text", "<record>"),
}


@pytest.mark.parametrize("case", sorted(RECORD_CORRUPTIONS))
def test_malformed_record(tmp_path, case):
    bad, field = RECORD_CORRUPTIONS[case]
    path = write_lines(tmp_path / "t.jsonl", [record("ok"), bad, record("ok2")])
    with pytest.raises(DataError) as info:
        load_selfrag(path)
    assert (info.value.file, info.value.field) == (str(path), field)
    assert info.value.record.startswith("line 2")
    assert [e.id for e in load_selfrag(path, on_error="skip")] == ["ok", "ok2"]


def test_broken_json_array_record_names_its_index(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([record("a"), record("b", output="[Retrieve]x")]), encoding="utf-8")
    kept, errors = load_selfrag_with_report(path)
    assert len(kept) == 1 and [(e.record, e.field) for e in errors] == [("#1 (id b)", "output")]


def test_broken_json_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(record("a")) + '\n{"instruction": \n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_selfrag(path)
    assert (info.value.record, info.value.field) == ("line 2", "<json>")


# --------------------------------------------------------------------------- reconstruction


def test_prompt_templates():
    assert selfrag_prompt(example(instruction="I")) == "### Instruction:\nI\n\n### Response:\n"
    assert selfrag_prompt(example(instruction="I", input_text="X")) == (
        "### Instruction:\nI\n\n### Input:\nX\n\n### Response:\n"
    )


def test_layout_and_labels():
    ex = reconstruct_selfrag(example())
    paris, lyon = passage_document(P_PARIS), passage_document(P_LYON)
    assert ex.segments == (
        Text("### Instruction:\nQ?\n\n### Response:\n", generated=False),
        Text("[Retrieval]", generated=True),
        Retrieval("r0"),
        Text(f"<paragraph>{P_PARIS}</paragraph>", generated=False),
        Text("[Relevant]Paris is the capital.[Fully supported][Retrieval]", generated=True),
        Retrieval("r1"),
        Text(f"<paragraph>{P_LYON}</paragraph>", generated=False),
        Text("[Irrelevant]It has 2M people [1].[Utility:4]", generated=True),
    )
    # the irrelevant passage's [RQ] gets no retrieval loss; its passage is not a document
    assert ex.queries == (Query("r0", (paris.id,), ()), Query("r1", (), ()))
    assert ex.documents == (paris,)
    assert paris.title == "Paris" and paris.units == ("Paris is the capital of France.",)
    assert ex.task == "selfrag" and ex.meta == {"source": "selfrag", "dataset_name": "flan_v2", "utility": 4}
    assert TrainingExample.from_dict(ex.to_dict()) == ex


def test_no_retrieval_has_no_queries():
    ex = reconstruct_selfrag(example(NO_RETRIEVAL))
    assert [type(s) for s in ex.segments] == [Text, Text] and ex.queries == () and ex.documents == ()


def test_passage_ids_are_content_based():
    assert passage_id(P_PARIS) == passage_id(P_PARIS) != passage_id(P_PARIS + " ")
    assert passage_id(P_PARIS).startswith("Paris@")
    one_line = passage_document("no title line")
    assert one_line.title == "" and one_line.units == ("no title line",)


NEG_A, NEG_B = "Nice\nNice is on the coast.", "Rome\nRome is in Italy."
PASSAGES = {"neg-a": NEG_A, "neg-b": NEG_B, "paris-copy": P_PARIS}


@pytest.mark.parametrize(
    "negatives",
    [{0: ("neg-a", "neg-b", "neg-a"), 1: ("neg-a",)}, lambda k, p: ("neg-a", "neg-b") if p.is_relevant else ("x",)],
    ids=["mapping", "callable"],
)
def test_hard_negatives(negatives):
    ex = reconstruct_selfrag(example(), negatives, PASSAGES)
    paris = passage_id(P_PARIS)
    # duplicates collapse; the irrelevant retrieval still gets no labels at all
    assert ex.queries == (Query("r0", (paris,), ("neg-a", "neg-b")), Query("r1", (), ()))
    assert [d.id for d in ex.documents] == [paris, "neg-a", "neg-b"]
    assert ex.documents[1] == passage_document(NEG_A, doc_id="neg-a")


def test_negatives_that_are_positives_are_dropped():
    two = "[Retrieval]<paragraph>" + P_PARIS + "</paragraph>[Relevant]A.[Retrieval]<paragraph>" + NEG_A + \
          "</paragraph>[Relevant]B.[Utility:5]"
    negatives = {0: (passage_id(NEG_A), "paris-copy", "neg-b"), 1: (passage_id(P_PARIS),)}
    ex = reconstruct_selfrag(example(two), negatives, {**PASSAGES, passage_id(NEG_A): NEG_A})
    # by id (another query's positive) and by content (a copy of the own positive under another id)
    assert [q.negatives for q in ex.queries] == [("neg-b",), ()]


def test_negative_without_text_is_an_error():
    with pytest.raises(ValueError, match="retrieval 0 negative 'missing' has no text"):
        reconstruct_selfrag(example(), {0: ("missing",)}, PASSAGES)


def test_literal_retrieval_token_in_text_is_rejected():
    with pytest.raises(ValueError, match="literal"):
        reconstruct_selfrag(example(instruction="What does [RQ] mean?"))


def test_corpus_passages_are_each_passage_once_in_first_seen_order():
    other = example(f"[Retrieval]<paragraph>{NEG_A}</paragraph>[Relevant]N.[Retrieval]<paragraph>{P_PARIS}"
                    "</paragraph>[Relevant]P.[Utility:5]")
    assert corpus_passages([example(), other, example(NO_RETRIEVAL)]) == [P_PARIS, P_LYON, NEG_A]


def test_repeated_ids_are_told_apart_in_order():
    ex = reconstruct_selfrag(example())
    other = reconstruct_selfrag(SelfRagExample("other", "Q?", "", parse_selfrag_output(RETRIEVED), "flan_v2"))
    assert [e.id for e in distinct_ids([ex, ex, other, ex])] == ["e1", "e1~2", "other", "e1~3"]
    assert distinct_ids([ex])[0] is ex


def test_negatives_by_passage_text_become_ids_and_a_bad_record_is_a_counted_skip():
    skips = Skips()
    bad = example(instruction="What does [RQ] mean?")
    out = reconstruct_with_negatives([example(), bad, example()], [P_PARIS, P_LYON, NEG_A],
                                     {P_PARIS: [NEG_A, P_LYON], P_LYON: [P_PARIS]}, skips)
    # the skipped record takes no number: the two good copies of 'e1' are e1 and e1~2
    assert [e.id for e in out] == ["e1", "e1~2"]
    assert out[0].queries == (Query("r0", (passage_id(P_PARIS),), (passage_id(NEG_A), passage_id(P_LYON))),
                              Query("r1", (), ()))
    assert skips.count("selfrag") == 1 and skips.listed[0].startswith("[selfrag] record 'e1': ")


def test_encoded_roles(char_tokenizer):
    """Character tokenizer: paragraph text is CTX except its last position, which predicts the model's
    [Relevant]/[Irrelevant]; the position before [RQ] predicts [RQ]; [RQ] itself is RET."""
    tok = SegmentTokenizer(char_tokenizer, add_bos=False)
    out = "[Retrieval]<paragraph>T\nab</paragraph>[Irrelevant]c"
    ex = reconstruct_selfrag(SelfRagExample("e", "I", "", parse_selfrag_output(out)))
    enc = encode_example(ex, tok)
    prompt = len(char_ids(char_tokenizer, "### Instruction:\nI\n\n### Response:\n"))
    rq_pos = prompt + len("[Retrieval]")
    assert enc.input_ids[rq_pos] == tok.ids.rq and enc.queries == [(rq_pos, "r0")]
    assert enc.roles[rq_pos - 1] == Role.GEN and enc.labels[rq_pos - 1] == tok.ids.rq
    assert enc.roles[rq_pos] == Role.RET and enc.labels[rq_pos] == IGNORE_INDEX
    paragraph = char_ids(char_tokenizer, "<paragraph>T\nab</paragraph>")
    span = range(rq_pos + 1, rq_pos + 1 + len(paragraph))
    assert [enc.input_ids[i] for i in span] == paragraph
    assert all(enc.roles[i] == Role.CTX and enc.labels[i] == IGNORE_INDEX for i in span[:-1])
    relevance = char_ids(char_tokenizer, "[Irrelevant]")
    assert enc.roles[span[-1]] == Role.GEN and enc.labels[span[-1]] == relevance[0]
    assert enc.input_ids[-1] == tok.ids.eos and enc.labels[-2] == tok.ids.eos


def test_collator_counts_irrelevant_queries(char_tokenizer):
    col = OneGenCollator(char_tokenizer, max_length=512, share_negatives=False)
    batch = col([reconstruct_selfrag(example())])
    assert batch.stats["queries"] == 2 and batch.stats["queries_without_positive"] == 1
    assert batch.positive_mask.tolist() == [[True], [False]]
