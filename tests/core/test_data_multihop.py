"""Tests for the strict HotpotQA / 2WikiMultihopQA loaders (onegen_core.data)."""
from __future__ import annotations

import copy
import gzip
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from onegen_core.data import (
    DataError,
    MultiHopRecord,
    Paragraph,
    SupportingFact,
    load_2wiki,
    load_2wiki_with_report,
    load_hotpotqa,
    load_hotpotqa_with_report,
)
from tests.core.conftest import write_lines

# Real samples live in the project root's sibling `shared/` (see shared/data/PROVENANCE.md).
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared sample data not found at {SHARED} (sibling of the project root)"
)
HOTPOT_TRAIN = SHARED / "hotpotqa" / "train_sample.json"
HOTPOT_DEV = SHARED / "hotpotqa" / "dev_distractor_sample.json"
WIKI_DEV = SHARED / "2wikimultihopqa" / "dev_sample.jsonl"


# --------------------------------------------------------------------------- synthetic records


def hotpot_record(record_id: str) -> dict[str, Any]:
    """A small valid HotpotQA record (sentences after the first keep a leading space)."""
    return {
        "_id": record_id,
        "question": "Which band did the singer of Song X join?",
        "answer": "Band Y",
        "supporting_facts": [["Song X", 0], ["Band Y", 1]],
        "context": [
            ["Song X", ["Song X is a song by Ann.", " It was released in 1999."]],
            ["Band Y", ["Band Y is a band.", " Ann joined Band Y in 2001.", " They split."]],
            ["Other", ["Unrelated."]],
        ],
        "type": "bridge",
        "level": "medium",
    }


def wiki_record(record_id: str, extras: bool = False) -> dict[str, Any]:
    """A small valid 2Wiki record (no leading spaces), optionally with the extra release fields."""
    record = {
        "_id": record_id,
        "type": "comparison",
        "question": "Which film came out first, Film A or Film B?",
        "context": [
            ["Film A", ["Film A is a 1950 film.", "It was directed by Bob."]],
            ["Film B", ["Film B is a 1960 film."]],
        ],
        "supporting_facts": [["Film A", 0], ["Film B", 0]],
        "evidences": [["Film A", "publication date", "1950"], ["Film B", "publication date", "1960"]],
        "answer": "Film A",
    }
    if extras:
        record["entity_ids"] = "Q1_Q2"
        record["evidences_id"] = [["Q1", "P577", "1950"], ["Q2", "P577", "1960"]]
        record["answer_id"] = "Q1"
    return record


def write_array(path: Path, records: list[Any]) -> Path:
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path



# --------------------------------------------------------------------------- real sample files


def assert_well_typed(record: MultiHopRecord) -> None:
    assert isinstance(record, MultiHopRecord)
    for value in (record.id, record.question, record.answer, record.type):
        assert isinstance(value, str) and value.strip()
    assert isinstance(record.context, tuple) and all(isinstance(p, Paragraph) for p in record.context)
    for paragraph in record.context:
        assert isinstance(paragraph.title, str)
        assert isinstance(paragraph.sentences, tuple)
        assert all(isinstance(s, str) for s in paragraph.sentences)
    assert record.supporting_facts and all(isinstance(f, SupportingFact) for f in record.supporting_facts)
    for fact in record.supporting_facts:
        assert type(fact.sentence) is int
        assert 0 <= fact.sentence < len(record.paragraph(fact.title).sentences)


@needs_shared
@pytest.mark.parametrize("path, count", [(HOTPOT_TRAIN, 100), (HOTPOT_DEV, 150)], ids=["train", "dev"])
def test_hotpotqa_samples_load(path: Path, count: int) -> None:
    records = load_hotpotqa(path)
    assert len(records) == count
    assert len({r.id for r in records}) == count
    for record in records:
        assert_well_typed(record)
        assert record.source == "hotpotqa"
        assert record.level in {"easy", "medium", "hard"}
        assert record.type in {"bridge", "comparison"}
        assert record.evidences == ()


@needs_shared
def test_hotpotqa_dev_keeps_the_two_paragraph_record() -> None:
    sizes = [len(r.context) for r in load_hotpotqa(HOTPOT_DEV)]
    assert sizes.count(2) == 1
    assert sizes.count(10) == 149


@needs_shared
def test_2wiki_sample_loads() -> None:
    records = load_2wiki(WIKI_DEV)
    assert len(records) == 10
    for record in records:
        assert_well_typed(record)
        assert record.source == "2wiki"
        assert record.level is None
        assert record.type in {"comparison", "bridge_comparison", "compositional", "inference"}
        assert record.evidences
        assert all(len(t) == 3 and all(isinstance(x, str) for x in t) for t in record.evidences)


@needs_shared
def test_real_paragraph_text() -> None:
    hotpot = load_hotpotqa(HOTPOT_DEV)[0].context[0]
    assert hotpot.text() == "".join(hotpot.sentences)  # leading spaces already present
    wiki = load_2wiki(WIKI_DEV)[0].context[0]
    assert wiki.text() == " ".join(wiki.sentences)


@needs_shared
def test_skip_mode_on_corrupted_copy_of_real_file(tmp_path: Path) -> None:
    records = json.loads(HOTPOT_TRAIN.read_text(encoding="utf-8"))
    del records[3]["answer"]
    records[10]["supporting_facts"][0][1] = 999
    records[20]["_id"] = records[0]["_id"]
    path = write_array(tmp_path / "train_corrupt.json", records)
    assert len(load_hotpotqa(path, on_error="skip")) == 97
    kept, errors = load_hotpotqa_with_report(path)
    assert len(kept) == 97
    assert [(e.record, e.field) for e in errors] == [
        (records[3]["_id"], "answer"),
        (records[10]["_id"], "supporting_facts[0][1]"),
        (records[0]["_id"], "_id"),
    ]
    with pytest.raises(DataError, match="train_corrupt.json"):
        load_hotpotqa(path)


# --------------------------------------------------------------------------- format equivalence


@pytest.mark.parametrize("writer", [write_array, write_lines], ids=["array", "jsonl"])
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "extra_fields"])
def test_2wiki_array_and_jsonl_load_identically(tmp_path: Path, writer: Callable, extras: bool) -> None:
    reference = load_2wiki(write_array(tmp_path / "ref.json", [wiki_record("w1"), wiki_record("w2")]))
    path = writer(tmp_path / "data.txt", [wiki_record("w1", extras), wiki_record("w2", extras)])
    assert load_2wiki(path) == reference
    assert reference[0].evidences == (("Film A", "publication date", "1950"), ("Film B", "publication date", "1960"))


def test_leading_whitespace_and_blank_jsonl_lines_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "spaced.jsonl"
    path.write_text("\n\n  " + json.dumps(wiki_record("a")) + "\n\n" + json.dumps(wiki_record("b")) + "\n")
    assert [r.id for r in load_2wiki(path)] == ["a", "b"]


def test_gzip_and_file_url(tmp_path: Path) -> None:
    path = tmp_path / "dev.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(wiki_record("g")) + "\n")
    assert load_2wiki(path)[0].id == "g"
    plain = write_array(tmp_path / "hp.json", [hotpot_record("h")])
    assert load_hotpotqa(plain.as_uri())[0].id == "h"


# --------------------------------------------------------------------------- record helpers


def test_paragraph_text_joins_both_styles() -> None:
    assert Paragraph("t", ("A b.", " C d.", " E.")).text() == "A b. C d. E."  # HotpotQA
    assert Paragraph("t", ("A b.", "C d.", "E.")).text() == "A b. C d. E."  # 2Wiki
    assert Paragraph("t", ("A.", "", "\nB.")).text() == "A.\nB."
    assert Paragraph("t", ()).text() == ""


def test_record_helpers(tmp_path: Path) -> None:
    raw = hotpot_record("h1")
    raw["supporting_facts"] = [["Band Y", 1], ["Song X", 0], ["Band Y", 2]]
    record = load_hotpotqa(write_array(tmp_path / "h.json", [raw]))[0]
    assert record.supporting_titles() == ("Band Y", "Song X")
    assert record.paragraph("Song X").sentences[1] == " It was released in 1999."
    with pytest.raises(KeyError):
        record.paragraph("Missing")


# --------------------------------------------------------------------------- corrupted files


def _set(path: list, value: Any) -> Callable[[dict], None]:
    def mutate(record: dict) -> None:
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _delete(key: str) -> Callable[[dict], None]:
    return lambda record: record.pop(key)


# (id, dataset, writer, mutation of the 2nd record, expected record label, expected field)
CORRUPTIONS = [
    ("missing_answer", "hotpotqa", write_array, _delete("answer"), "r1", "answer"),
    ("missing_level", "hotpotqa", write_array, _delete("level"), "r1", "level"),
    ("question_not_string", "hotpotqa", write_array, _set(["question"], 42), "r1", "question"),
    ("empty_answer", "hotpotqa", write_array, _set(["answer"], "  "), "r1", "answer"),
    ("index_is_string", "hotpotqa", write_array, _set(["supporting_facts", 1, 1], "1"), "r1", "supporting_facts[1][1]"),
    ("index_is_bool", "hotpotqa", write_array, _set(["supporting_facts", 1, 1], True), "r1", "supporting_facts[1][1]"),
    ("unknown_title", "hotpotqa", write_array, _set(["supporting_facts", 1, 0], "Nope"), "r1", "supporting_facts[1][0]"),
    ("index_out_of_range", "hotpotqa", write_array, _set(["supporting_facts", 1, 1], 3), "r1", "supporting_facts[1][1]"),
    ("negative_index", "hotpotqa", write_array, _set(["supporting_facts", 0, 1], -1), "r1", "supporting_facts[0][1]"),
    ("sentence_not_string", "hotpotqa", write_array, _set(["context", 1, 1, 0], None), "r1", "context[1][1][0]"),
    ("fact_not_pair", "hotpotqa", write_array, _set(["supporting_facts", 0], ["Song X"]), "r1", "supporting_facts[0]"),
    ("duplicate_id", "hotpotqa", write_array, _set(["_id"], "r0"), "r0", "_id"),
    ("missing_id_array", "hotpotqa", write_array, _delete("_id"), "#1", "_id"),
    ("empty_id", "hotpotqa", write_array, _set(["_id"], ""), "#1", "_id"),
    ("missing_evidences", "2wiki", write_lines, _delete("evidences"), "r1", "evidences"),
    ("evidence_not_triple", "2wiki", write_lines, _set(["evidences", 0], ["a", "b"]), "r1", "evidences[0]"),
    ("context_not_list", "2wiki", write_lines, _set(["context"], {"Film A": []}), "r1", "context"),
    ("missing_id_jsonl", "2wiki", write_lines, _delete("_id"), "line 2", "_id"),
    ("wiki_duplicate_id", "2wiki", write_lines, _set(["_id"], "r0"), "r0", "_id"),
    ("wiki_unknown_title", "2wiki", write_array, _set(["supporting_facts", 0, 0], "Film C"), "r1", "supporting_facts[0][0]"),
]
LOADERS = {"hotpotqa": (hotpot_record, load_hotpotqa, load_hotpotqa_with_report),
           "2wiki": (wiki_record, load_2wiki, load_2wiki_with_report)}


@pytest.mark.parametrize(
    "dataset, writer, mutate, record_label, field",
    [case[1:] for case in CORRUPTIONS],
    ids=[case[0] for case in CORRUPTIONS],
)
def test_corrupted_record_raises_located_error(
    tmp_path: Path, dataset: str, writer: Callable, mutate: Callable, record_label: str, field: str
) -> None:
    make, load, load_with_report = LOADERS[dataset]
    records = [make("r0"), make("r1"), make("r2")]
    mutate(records[1])
    path = writer(tmp_path / f"corrupt_{dataset}.data", records)

    with pytest.raises(DataError) as caught:
        load(path)
    error = caught.value
    assert (error.file, error.record, error.field) == (str(path), record_label, field)
    message = str(error)
    assert path.name in message and f"record {record_label}:" in message and f"field '{field}'" in message

    assert [r.id for r in load(path, on_error="skip")] == ["r0", "r2"]
    kept, errors = load_with_report(path)
    assert len(kept) == 2 and len(errors) == 1 and errors[0].field == field


def test_broken_jsonl_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(wiki_record("a")), '{"_id": "b", "question": ', json.dumps(wiki_record("c"))]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        load_2wiki(path)
    assert (caught.value.record, caught.value.field) == ("line 2", "<json>")
    assert "broken.jsonl: record line 2: field '<json>'" in str(caught.value)
    kept, errors = load_2wiki_with_report(path)
    assert [r.id for r in kept] == ["a", "c"] and [e.record for e in errors] == ["line 2"]


def test_skip_mode_counts_bad_records(tmp_path: Path) -> None:
    records = [hotpot_record(f"r{i}") for i in range(6)]
    records[1]["question"] = None
    records[4]["supporting_facts"][0][0] = "Nope"
    records.insert(3, "not an object")
    path = write_array(tmp_path / "mixed.json", records)
    assert len(load_hotpotqa(path, on_error="skip")) == 4
    kept, errors = load_hotpotqa_with_report(path)
    assert [r.id for r in kept] == ["r0", "r2", "r3", "r5"]
    assert [(e.record, e.field) for e in errors] == [
        ("r1", "question"), ("#3", "<record>"), ("r4", "supporting_facts[0][0]")
    ]


@pytest.mark.parametrize(
    "content, field, fragment",
    [
        ('[{"_id": "a"},\n  {"_id": ]', "<json>", "line 2 column"),
        ("", "<root>", "empty"),
        ('"just a string"', "<root>", "starts with"),
    ],
    ids=["invalid_array", "empty_file", "not_array_or_objects"],
)
def test_file_level_errors_raise_even_in_report_mode(tmp_path: Path, content: str, field: str, fragment: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    for call in (load_hotpotqa, load_hotpotqa_with_report, lambda p: load_2wiki(p, on_error="skip")):
        with pytest.raises(DataError) as caught:
            call(path)
        assert caught.value.field == field and fragment in caught.value.message
        assert str(caught.value).startswith(f"{path}: record <file>: ")


def test_hotpotqa_test_split_records_are_rejected(tmp_path: Path) -> None:
    record = hotpot_record("t0")
    del record["answer"], record["supporting_facts"]
    with pytest.raises(DataError, match="field 'answer': missing required field"):
        load_hotpotqa(write_array(tmp_path / "test.json", [record]))


def test_unknown_on_error_policy_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_error"):
        load_2wiki(write_lines(tmp_path / "x.jsonl", [wiki_record("a")]), on_error="ignore")  # type: ignore[arg-type]


def test_unknown_fields_are_ignored_and_input_is_not_mutated(tmp_path: Path) -> None:
    raw = hotpot_record("h")
    raw["extra"] = {"anything": [1, 2]}
    before = copy.deepcopy(raw)
    assert load_hotpotqa(write_array(tmp_path / "x.json", [raw]))[0].id == "h"
    assert raw == before


# --------------------------------------------------------------------------- error type, imports


def test_data_error_format_and_pickle() -> None:
    error = DataError("f.json", "abc", "context[3][1][0]", "expected string, got null")
    assert str(error) == "f.json: record abc: field 'context[3][1][0]': expected string, got null"
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.file, clone.record, clone.field, clone.message, str(clone)) == (
        error.file, error.record, error.field, error.message, str(error)
    )


def test_no_heavy_dependencies_imported() -> None:
    banned = ["prefect", "ray", "dvc", "mlflow", "lancedb", "deepspeed"]
    code = f"import sys, onegen_core.data; print([m for m in {banned!r} if m in sys.modules])"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
