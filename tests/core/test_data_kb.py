"""Tests for the entity knowledge-base loader and writer (onegen_core.data.kb)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from onegen_core.data.errors import DataError
from onegen_core.data.kb import Entity, load_kb, load_kb_with_report, write_kb
from tests.core.conftest import write_lines

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ELEVANT = SHARED / "entity_linking" / "elevant"

ENTITIES = [
    Entity("Q90", "Paris", "capital and largest city of France", type="Q515", aliases=("City of Light",)),
    Entity("Q142", "France", "country in Western Europe"),
    Entity("Q47899", "Paris Hilton", ""),  # a KB built from names alone has no description
    Entity("Q1", "Zürich 東京", "non-ASCII text survives the round trip", aliases=("Z", "T")),
]



def good(entity_id: str = "Q1", **fields: Any) -> dict[str, Any]:
    return {"id": entity_id, "title": "T", "description": "d", **fields}


@pytest.mark.parametrize("name", ["kb.jsonl", "kb.jsonl.gz"])
def test_write_then_load_round_trips(tmp_path, name):
    path = tmp_path / name
    assert write_kb(path, ENTITIES) == len(ENTITIES)
    assert load_kb(path) == ENTITIES
    assert list(tmp_path.iterdir()) == [path], "temporary file left behind"


def test_written_lines_omit_unset_optional_fields(tmp_path):
    path = tmp_path / "kb.jsonl"
    write_kb(path, ENTITIES[1:2])
    assert json.loads(path.read_text(encoding="utf-8")) == {"id": "Q142", "title": "France",
                                                              "description": "country in Western Europe"}


def test_extra_and_null_fields_are_accepted(tmp_path):
    path = write_lines(tmp_path / "kb.jsonl", [good("Q1", type=None, aliases=None, url="https://x", score=3)])
    assert load_kb(path) == [Entity("Q1", "T", "d")]


CORRUPTIONS = {
    "missing id": ({"title": "T", "description": "d"}, "id"),
    "empty id": (good(" "), "id"),
    "integer id": (good(5), "id"),
    "missing title": ({"id": "Q1", "description": "d"}, "title"),
    "empty title": (good(title=""), "title"),
    "blank title": (good(title="  "), "title"),
    "missing description": ({"id": "Q1", "title": "T"}, "description"),
    "description not a string": (good(description=["d"]), "description"),
    "null description": (good(description=None), "description"),
    "type not a string": (good(type=5), "type"),
    "aliases not a list": (good(aliases="A"), "aliases"),
    "alias not a string": (good(aliases=["A", 2]), "aliases[1]"),
    "not an object": (["Q1", "T"], "<record>"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_malformed_entry_is_located(tmp_path, case):
    bad, field = CORRUPTIONS[case]
    path = write_lines(tmp_path / "kb.jsonl", [good("Q7"), bad, good("Q8")])
    with pytest.raises(DataError) as info:
        load_kb(path)
    assert (info.value.file, info.value.field) == (str(path), field)
    assert info.value.record.startswith("line 2")
    kept, errors = load_kb_with_report(path)
    assert [e.id for e in kept] == ["Q7", "Q8"] and len(errors) == 1
    assert load_kb(path, on_error="skip") == kept


def test_duplicate_id(tmp_path):
    path = write_lines(tmp_path / "kb.jsonl", [good("Q1"), good("Q2"), good("Q1", title="Other")])
    with pytest.raises(DataError) as info:
        load_kb(path)
    assert (info.value.record, info.value.field) == ("line 3 (id Q1)", "id")
    assert "first seen at line 1" in info.value.message
    kept, errors = load_kb_with_report(path)
    assert [e.title for e in kept] == ["T", "T"] and len(errors) == 1


def test_broken_json_line_and_skip_counts(tmp_path):
    path = tmp_path / "kb.jsonl"
    path.write_text('{"id": "Q1", "title": "T", "description": ""}\n{"id": "Q2",\n\n{"id": 3}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_kb(path)
    assert (info.value.record, info.value.field) == ("line 2", "<json>")
    kept, errors = load_kb_with_report(path)
    assert len(kept) == 1 and [(e.record, e.field) for e in errors] == [("line 2", "<json>"), ("line 4", "id")]


@pytest.mark.parametrize(
    "entities, field",
    [([Entity("Q1", "A", ""), Entity("Q1", "B", "")], "id"), ([Entity("Q1", "", "")], "title")],
)
def test_write_rejects_what_load_would_reject(tmp_path, entities, field):
    path = tmp_path / "kb.jsonl"
    with pytest.raises(DataError) as info:
        write_kb(path, entities)
    assert info.value.file == str(path) and info.value.field == field
    assert not path.exists()


def test_empty_file_is_an_empty_kb(tmp_path):
    path = tmp_path / "kb.jsonl"
    path.write_text("", encoding="utf-8")
    assert load_kb(path) == []


@pytest.mark.skipif(not ELEVANT.is_dir(), reason=f"shared ELEVANT benchmarks not found at {ELEVANT}")
def test_kb_of_names_from_a_real_benchmark_round_trips(tmp_path):
    """The shared data has no entity descriptions: a KB of gold names is what can be built from it."""
    from onegen_core.data.elevant import load_elevant

    names: dict[str, str] = {}
    for article in load_elevant(ELEVANT / "msnbc.benchmark.jsonl"):
        for label in article.linkable_labels():
            names.setdefault(label.entity_id, label.name)
    entities = [Entity(qid, name, "") for qid, name in sorted(names.items())]
    path = tmp_path / "msnbc_kb.jsonl"
    write_kb(path, entities)
    assert load_kb(path) == entities and len(entities) > 100
