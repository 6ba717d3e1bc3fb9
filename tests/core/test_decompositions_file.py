"""The decompositions file annotate writes and label reads (onegen_core.prepare.decomposition.read_decompositions):
strict JSON Lines, malformed decompositions and unknown records are DataErrors naming file, line and field;
a second decomposition of one example is a counted skip."""
from __future__ import annotations

import json

import pytest

from onegen_core.data import DataError
from onegen_core.prepare.decomposition import Decomposition, Step, nonblank_text, read_decompositions
from onegen_core.prepare.skips import Skips


def line(example_id: str, title: str = "Paris") -> str:
    return json.dumps({"example_id": example_id, "steps": [{"sub_question": None, "doc_title": title,
                                                            "sub_answer": None}], "final_answer": "yes"})


def test_decompositions_in_file_order_and_a_duplicate_is_skipped(tmp_path):
    f = tmp_path / "decompositions.jsonl"
    f.write_text(line("a") + "\n\n" + line("b", "Lyon") + "\n" + line("a", "Nice") + "\n")
    skips = Skips()
    out = read_decompositions(f, {"a", "b"}, skips)
    assert list(out) == ["a", "b"]
    assert out["a"] == (Decomposition("a", (Step(None, "Paris", None),), "yes"), f"{f}:1")
    assert out["b"][1] == f"{f}:3"  # blank lines are skipped, not renumbered
    assert skips.listed == [f"[multihop] {f}:4: duplicate decomposition of 'a' (first at {f}:1); kept the first"]


@pytest.mark.parametrize("raw, field, message", [
    ('{"example_id": "a", "steps": [], "final_answer": "x"}', "steps", "field 'steps' must be a non-empty array"),
    ('{"example_id": "a", "steps": [{"doc_title": ""}], "final_answer": "x"}', "doc_title",
     "{f}:1.steps[0]: field 'doc_title' must be a non-empty string, got ''"),
    ('{"example_id": "a", "steps": [3], "final_answer": "x"}', "steps[0]",
     "{f}:1.steps[0]: expected an object, got int"),
    ('[1]', "<record>", "expected an object, got list"),
    ('{"example_id": "zz", "steps": [{"doc_title": "P"}], "final_answer": "x"}', "example_id",
     "'zz' is not a prepared record (re-run annotate after prepare)"),
    ('{"example_id": "a", ', "<json>", "invalid JSON at column 1: Expecting property name enclosed in double quotes"),
])
def test_a_malformed_line_names_file_line_and_field(tmp_path, raw, field, message):
    f = tmp_path / "decompositions.jsonl"
    f.write_text(raw + "\n")
    with pytest.raises(DataError) as e:
        read_decompositions(f, {"a"}, Skips())
    assert (e.value.file, e.value.record, e.value.field, e.value.message) == \
        (str(f), "line 1", field, message.format(f=f))


def test_a_missing_file_says_which_stage_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="decompositions missing; run `dvc repro annotate`"):
        read_decompositions(tmp_path / "none.jsonl", set(), Skips())


def test_nonblank_text_names_where_and_the_field():
    assert nonblank_text({"k": " v "}, "k", "result") == " v "
    with pytest.raises(ValueError, match=r"^result: field 'k' must be a non-empty string, got ' '$"):
        nonblank_text({"k": " "}, "k", "result")
    with pytest.raises(ValueError, match=r"got None$"):
        nonblank_text({}, "k", "result")
