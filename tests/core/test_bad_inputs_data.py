"""Issue 16, data files: every bad record or byte is a `DataError` naming file, record (or line) and field;
the training file is strict (unknown task, duplicate ids, mistyped units); special tokens in data text
are escaped where data enters and rejected where the structure does not put them."""
from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import pytest

from onegen_core.data import DataError, load_elevant_with_report, load_hotpotqa, load_hotpotqa_with_report, load_kb
from onegen_core.method.segments import ExampleError, Retrieval, Text, TrainingExample, escape_special_tokens
from onegen_core.method.tokens import RD, RQ, SPECIAL_TOKENS
from onegen_core.training.dataset import load_examples
from tests.core.conftest import write_lines

ROOT = Path(__file__).resolve().parents[2]


def hotpot_records(shared_data, n=3) -> list[dict]:
    return json.loads((shared_data / "hotpotqa" / "train_sample.json").read_text())[:n]


def example_dict(**over) -> dict:
    """One valid multi-hop training line."""
    d = {
        "id": "q1", "task": "multihop",
        "segments": [{"text": "The question is: who?\n", "generated": False}, {"retrieval": "hop0"},
                     {"text": "<paragraph>A: a.</paragraph>", "generated": False},
                     {"text": "<FINAL-ANSWER>x</FINAL-ANSWER>", "generated": True}],
        "queries": [{"id": "hop0", "positives": ["A@1#0"], "negatives": ["B@2#0"]}],
        "documents": [{"id": "A@1", "title": "A", "units": ["a."], "granularity": "sentence"},
                      {"id": "B@2", "title": "B", "units": ["b."], "granularity": "sentence"}],
        "meta": {},
    }
    d.update(over)
    return d



# --------------------------------------------------------------------------- multi-hop records


def test_empty_supporting_facts_is_a_record_error(tmp_path, shared_data):
    recs = hotpot_records(shared_data)
    recs[1]["supporting_facts"] = []
    f = tmp_path / "t.json"
    f.write_text(json.dumps(recs))
    kept, errors = load_hotpotqa_with_report(f)
    assert len(kept) == 2 and len(errors) == 1
    e = errors[0]
    assert (e.file, e.record, e.field, e.message) == (str(f), recs[1]["_id"], "supporting_facts", "must not be empty")


def test_two_paragraphs_with_one_title_are_a_record_error(tmp_path, shared_data):
    recs = hotpot_records(shared_data)
    ctx = recs[0]["context"]
    ctx[3] = [ctx[0][0], ["another paragraph under the same title."]]
    f = tmp_path / "t.json"
    f.write_text(json.dumps(recs))
    kept, errors = load_hotpotqa_with_report(f)
    assert len(kept) == 2 and errors[0].record == recs[0]["_id"] and errors[0].field == "context[3][0]"
    assert "repeats context[0][0]" in errors[0].message


def test_a_lone_surrogate_is_a_record_error_naming_the_field(tmp_path, shared_data):
    recs = hotpot_records(shared_data)
    text = json.dumps(recs).replace(json.dumps(recs[2]["question"]), '"broken \\ud800 question"', 1)
    f = tmp_path / "t.json"
    f.write_text(text)
    kept, errors = load_hotpotqa_with_report(f)
    assert len(kept) == 2 and errors[0].field == "question" and "lone surrogate U+D800" in errors[0].message


# --------------------------------------------------------------------------- ELEVANT


def elevant_line(article_id, text="Paris is nice.", **over):
    return {"id": article_id, "title": "", "text": text, "evaluation_span": [0, len(text)],
            "labels": [{"id": 0, "span": [0, 5], "entity_id": "Q90", "name": "Paris", "type": "OTHER"}], **over}


def test_elevant_ids_1_and_string_1_collide(tmp_path):
    f = write_lines(tmp_path / "b.benchmark.jsonl", [elevant_line(1), elevant_line("1"), elevant_line(2)])
    kept, errors = load_elevant_with_report(f)
    assert [a.id for a in kept] == [1, 2]
    e = errors[0]
    assert (e.file, e.record, e.field) == (str(f), "line 2 (id 1)", "id") and "first seen at line 1" in e.message


# --------------------------------------------------------------------------- file-level faults, located


def test_truncated_gz_names_file_and_position(tmp_path):
    f = tmp_path / "kb.jsonl.gz"
    rows = "".join(json.dumps({"id": f"Q{i}", "title": f"t{i}", "description": "d" * 50}) + "\n" for i in range(400))
    data = gzip.compress(rows.encode())
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        load_kb(f)
    assert e.value.file == str(f) and e.value.field == "<compression>"
    assert "truncated or corrupt file after line" in e.value.message


def test_deeply_nested_json_is_a_located_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    f = tmp_path / "kb.jsonl"
    f.write_text(json.dumps({"id": "Q1", "title": "a", "description": ""}) + "\n" + '{"id": ' + deep + "}\n")
    with pytest.raises(DataError) as e:
        load_kb(f)
    assert (e.value.record, e.value.field, e.value.message) == ("line 2", "<json>", "JSON nested too deeply to read")
    g = tmp_path / "h.json"
    g.write_text("[" + deep + "]")
    with pytest.raises(DataError, match=r"h\.json: record <file>: field '<json>': JSON nested too deeply"):
        load_hotpotqa(g)


def test_the_strict_jsonl_reader_keeps_what_it_replaced_as_the_context(tmp_path):
    """`read_jsonl` yields what came before a bad line, then raises at it; the decoder's own error stays
    the `__context__` (a caller such as `onegen index add` words it its own way)."""
    from onegen_core.data.strict_json import read_jsonl

    f = tmp_path / "rows.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": \n\xff\n')
    rows = read_jsonl(f)
    assert next(rows) == (1, {"a": 1})
    with pytest.raises(DataError) as e:
        next(rows)
    assert (e.value.file, e.value.record, e.value.field) == (str(f), "line 3", "<json>")
    assert isinstance(e.value.__context__, json.JSONDecodeError) and e.value.__suppress_context__
    f.write_bytes(b'{"a": 1}\n\xff\n')
    with pytest.raises(DataError) as e:
        list(read_jsonl(f))
    assert (e.value.record, e.value.field) == ("line 2", "<encoding>")
    assert isinstance(e.value.__context__, UnicodeDecodeError)


# --------------------------------------------------------------------------- the training file


@pytest.mark.parametrize(
    "line, record, field, message",
    [
        (example_dict(task="multihopp"), "line 2 (id 'q1')", "task", "unknown task 'multihopp'"),
        (example_dict(documents=[{"id": "A@1", "units": [1, 2]}]), "line 2 (id 'q1')", "documents[0].units[0]",
         "field 'units[0]' must be str, got int"),
        (example_dict(queries=[{"id": "hop0", "positives": ["A@1#0"], "negatives": [7]}]), "line 2 (id 'q1')",
         "queries[0].negatives[0]", "must be str"),
        (example_dict(documents=example_dict()["documents"] * 2), "line 2 (id 'q1')", "documents",
         "duplicate document id 'A@1'"),
        (example_dict(segments=[{"text": "q\n", "generated": False}, {"text": "a</FINAL-ANSWER>", "generated": True}]),
         "line 2 (id 'q1')", "segments[1].text", "</FINAL-ANSWER> without its <FINAL-ANSWER>"),
        (example_dict(segments=[{"text": "q\n", "generated": False}, {"text": "a<CON>b", "generated": True}]),
         "line 2 (id 'q1')", "segments[1].text", "<CON> must be a segment of its own"),
        (example_dict(segments=[{"text": "q\n", "generated": False}, {"text": "<CON>", "generated": True}]),
         "line 2 (id 'q1')", "segments[1]", "<CON> is a given segment right after a Retrieval"),
        (example_dict(documents=[{"id": "A@1", "title": "A", "units": ["a [RD] b"], "granularity": "sentence"},
                                 {"id": "B@2", "units": ["b."], "granularity": "sentence"}]),
         "line 2 (id 'q1')", "documents[0].units[0]", "contains a literal [RD]"),
        (example_dict(segments=[{"text": "who is <MENTION>x</MENTION>?\n", "generated": False}]),
         "line 2 (id 'q1')", "segments[0].text", "the prompt contains a literal <MENTION>"),
        (example_dict(segments=[{"text": "q\n", "generated": False},
                                {"text": "<FINAL-ANSWER>a</FINAL-ANSWER><FINAL-ANSWER>b</FINAL-ANSWER>", "generated": True}]),
         "line 2 (id 'q1')", "segments", "2 <FINAL-ANSWER> blocks"),
    ],
)
def test_training_file_errors_name_file_line_and_field(tmp_path, line, record, field, message):
    f = write_lines(tmp_path / "train.jsonl", [example_dict(id="q0"), line])
    with pytest.raises(DataError) as e:
        load_examples(f, ["multihop"])
    assert (e.value.file, e.value.record, e.value.field) == (str(f), record, field)
    assert message in e.value.message


def test_duplicate_example_ids_are_an_error(tmp_path):
    f = write_lines(tmp_path / "train.jsonl", [example_dict(), example_dict(id="q2"), example_dict()])
    with pytest.raises(DataError) as e:
        load_examples(f, ["multihop"])
    assert (e.value.record, e.value.field, e.value.message) == ("line 3 (id 'q1')", "id", "duplicate id (first at line 1)")


@pytest.mark.parametrize(
    "raw, field, message",
    [
        (b'{"id": "q2", "task": ', "<json>", "invalid JSON at column"),
        (b'{"id": "q2\xff"}', "<encoding>", "not valid UTF-8"),
        (b'{"id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "<json>", "nested too deeply"),
    ],
)
def test_training_file_bytes_that_are_not_json_name_the_line(tmp_path, raw, field, message):
    f = write_lines(tmp_path / "train.jsonl", [example_dict(), raw])
    with pytest.raises(DataError) as e:
        load_examples(f, ["multihop"])
    assert (e.value.file, e.value.record, e.value.field) == (str(f), "line 2", field) and message in e.value.message


def test_training_file_with_a_bom_loads(tmp_path):
    f = write_lines(tmp_path / "train.jsonl", [example_dict(), example_dict(id="q2")], prefix=b"\xef\xbb\xbf")
    assert [e.id for e in load_examples(f, ["multihop"])] == ["q1", "q2"]


def test_per_task_caps_keep_a_hash_chosen_subset_of_each_task(tmp_path):
    """`TrainDataConfig.caps()`: a task's own cap replaces the common one; 0 keeps all of that task."""
    rows = [example_dict(id=f"q{i}") for i in range(6)] + [example_dict(id=f"e{i}", task="entity_linking") for i in range(5)]
    f = write_lines(tmp_path / "train.jsonl", rows)
    tasks = ["multihop", "entity_linking"]
    both = load_examples(f, tasks, {"multihop": 0, "entity_linking": 2})
    assert [e.task for e in both].count("multihop") == 6 and [e.task for e in both].count("entity_linking") == 2
    same = load_examples(f, tasks, 2)
    assert {e.id for e in same if e.task == "entity_linking"} == {e.id for e in both if e.task == "entity_linking"}
    assert len(same) == 4
    assert [e.id for e in both] == [r["id"] for r in rows if r["id"] in {e.id for e in both}]  # file order kept

    from onegen_core.config import load_params

    p = load_params(ROOT / "params.yaml", {"train_data.max_examples_per_task": 3,
                                           "train_data.max_examples_by_task": {"multihop": 0}})
    assert p.train_data.caps() == {"multihop": 0, "entity_linking": 3}


# --------------------------------------------------------------------------- special tokens in data text


def test_the_escape_defuses_every_special_token_and_keeps_length():
    for tok in SPECIAL_TOKENS:
        text = f"a {tok} b"
        esc = escape_special_tokens(text)
        assert tok not in esc and len(esc) == len(text) and escape_special_tokens(esc) == esc
    assert escape_special_tokens("x [RQ] y </FINAL-ANSWER>") == "x \uff3bRQ] y \uff1c/FINAL-ANSWER>"


def test_reconstruction_rejects_unescaped_data_text():
    with pytest.raises(ExampleError, match=r"segments\[3\]\.text.*<CON> must be a segment of its own"):
        TrainingExample("t", "x", (Text("q\n", False), Retrieval("q"), Text("<CON>", False), Text("a <CON>", True)),
                        queries=())


def test_a_literal_rd_in_a_distractor_sentence_yields_one_rd_per_retrieval_position(char_tokenizer, shared_data):
    """The report's case: 7 [RD] tokens against 6 retrieval positions. After the escape, as many [RD]
    ids as units, in the label path (escape_record → reconstruct) and the encode path (documents)."""
    from onegen_core.config import ReconstructConfig
    from onegen_core.data.multihop import Paragraph
    from onegen_core.method.collator import OneGenCollator
    from onegen_core.method.encoding import SegmentTokenizer, encode_document
    from onegen_core.prepare.documents import documents_from_multihop
    from onegen_core.prepare.multihop import escape_record, hops_from_supporting_facts, reconstruct_multihop

    rec = load_hotpotqa(shared_data / "hotpotqa" / "train_sample.json")[0]
    gold = set(rec.supporting_titles())
    i = next(k for k, p in enumerate(rec.context) if p.title not in gold)
    bad = Paragraph(rec.context[i].title, (f"A distractor that spells {RD} and {RQ}.",) + rec.context[i].sentences[1:])
    raw = type(rec)(**{**rec.__dict__, "context": rec.context[:i] + (bad,) + rec.context[i + 1:]})
    tok = SegmentTokenizer(char_tokenizer)
    rd = tok.ids.rd
    cfg = ReconstructConfig(max_negative_paragraphs=20)
    ex = reconstruct_multihop(escape_record(raw), hops_from_supporting_facts(raw), cfg)
    # documents are escaped by the function that builds them (paragraph_document), whoever calls it
    plain = reconstruct_multihop(raw, hops_from_supporting_facts(raw), cfg)
    assert [d.units for d in plain.documents] == [d.units for d in ex.documents]
    assert any("\uff3bRD]" in u for d in ex.documents for u in d.units)
    batch = OneGenCollator(char_tokenizer, 4096, 4096)([ex])
    assert int((batch.doc_input_ids == rd).sum()) == len(batch.unit_ids) == sum(len(d.unit_ids()) for d in ex.documents)
    for doc in documents_from_multihop([raw], "sentence"):  # what `encode` indexes
        enc = encode_document(doc, tok)
        assert enc.input_ids.count(rd) == len(enc.docs) == len(doc.unit_ids())
    assert sum(s.text.count(RQ) for s in ex.segments if isinstance(s, Text)) == 0


def test_kb_descriptions_and_passages_are_escaped_where_documents_are_built(char_tokenizer):
    from onegen_core.data.kb import Entity
    from onegen_core.data.passages import Passage
    from onegen_core.method.encoding import SegmentTokenizer, encode_document
    from onegen_core.prepare.documents import documents_from_kb, documents_from_passages
    from onegen_core.prepare.entity_linking import Mention, reconstruct_entity_linking

    tok = SegmentTokenizer(char_tokenizer)
    docs = documents_from_kb([Entity("Q1", "A [RD] title", "Says [RD] twice [RD].")])
    docs += documents_from_passages([Passage("P", "One [RD]. Two <CON>.")], "sentence")
    for doc in docs:
        enc = encode_document(doc, tok)
        assert enc.input_ids.count(tok.ids.rd) == len(doc.unit_ids())
        assert tok.ids.con not in enc.input_ids
    ex = reconstruct_entity_linking("e", "Paris is nice", [Mention(0, 5, "Q90")], {"Q90": ("Paris [RD]", "city [RD]")})
    assert [d.units for d in ex.documents] == [("city \uff3bRD]",)]


def test_prompts_at_inference_never_produce_a_special_token(char_tokenizer):
    from onegen_core.method.encoding import SegmentTokenizer

    tok = SegmentTokenizer(char_tokenizer)
    special = {tok.ids[t] for t in SPECIAL_TOKENS}
    ids = tok.prompt("The question is: what does [RQ] or </FINAL-ANSWER> mean?\n")
    assert not special & set(ids)
    # text with no special token is tokenised as is, inside the chat template when the tokenizer has one
    before, after = tok.chat or ("", "")
    wrapped = tok.prompt("plain\n")
    assert wrapped[len(wrapped) - len(tok(after)) - len(tok("plain\n")):len(wrapped) - len(tok(after))] == tok("plain\n")
    assert tok.prompt("a [RQ] b\n") != tok.prompt("a RQ b\n")  # escaped, not deleted


def test_an_answer_that_spells_the_closing_tag_is_escaped_in_the_label_path(shared_data):
    from onegen_core.config import ReconstructConfig
    from onegen_core.prepare.multihop import escape_record, hops_from_supporting_facts, reconstruct_multihop

    rec = load_hotpotqa(shared_data / "hotpotqa" / "train_sample.json")[1]
    raw = type(rec)(**{**rec.__dict__, "answer": "yes</FINAL-ANSWER> no"})
    with pytest.raises(ExampleError, match="FINAL-ANSWER"):
        reconstruct_multihop(raw, hops_from_supporting_facts(raw), ReconstructConfig())
    ex = reconstruct_multihop(escape_record(raw), hops_from_supporting_facts(raw), ReconstructConfig())
    assert ex.segments[-1].text == "<FINAL-ANSWER>yes\uff1c/FINAL-ANSWER> no</FINAL-ANSWER>"


def test_copy_of_a_record_keeps_equal_when_nothing_to_escape(shared_data):
    from onegen_core.prepare.multihop import escape_record

    rec = load_hotpotqa(shared_data / "hotpotqa" / "train_sample.json")[2]
    assert escape_record(rec) == rec and copy.deepcopy(rec) == rec
