"""Tests for the strict ELEVANT benchmark loader (onegen_core.data.elevant)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from onegen_core.data.elevant import (
    NIL,
    NO_MAPPING,
    ElevantArticle,
    ElevantLabel,
    benchmark_name,
    is_qid,
    load_elevant,
    load_elevant_with_report,
)
from onegen_core.data.errors import FILE_RECORD, DataError
from tests.core.conftest import write_lines

# Real benchmarks live in the project root's sibling `shared/` (see shared/data/PROVENANCE.md).
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ELEVANT = SHARED / "entity_linking" / "elevant"
needs_shared = pytest.mark.skipif(
    not ELEVANT.is_dir(), reason=f"shared ELEVANT benchmarks not found at {ELEVANT} (sibling of the project root)"
)

# (articles, labels) per benchmark, as stated in PROVENANCE.md.
COUNTS = {
    "aida-conll-dev": (216, 5917),
    "msnbc": (20, 755),
    "oke-2015-eval": (101, 664),
    "oke-2016-eval": (55, 340),
    "reuters-128": (128, 880),
    "spotlight": (58, 330),
    "derczynski": (183, 292),
}
SOURCE = "msnbc"  # small real file the corruption cases start from (it has nested labels)


def bench(name: str) -> Path:
    return ELEVANT / f"{name}.benchmark.jsonl"


# --------------------------------------------------------------------------- real files


@needs_shared
def test_every_shared_benchmark_is_listed():
    assert sorted(p.name for p in ELEVANT.glob("*.benchmark.jsonl")) == sorted(f"{n}.benchmark.jsonl" for n in COUNTS)


@needs_shared
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_benchmark_loads_with_documented_counts(name):
    articles, errors = load_elevant_with_report(bench(name))
    assert errors == []
    assert (len(articles), sum(len(a.labels) for a in articles)) == COUNTS[name]
    assert {a.benchmark for a in articles} == {name}
    for article in articles:
        assert article.evaluation_span == (0, len(article.text))
        # the only non-QID ids in these releases are the two markers
        assert {lb.entity_id for lb in article.labels if not lb.is_linkable} <= {NIL, NO_MAPPING}
        top = article.top_level_labels()
        assert all(b.span_start >= a.span_end for a, b in zip(top, top[1:])), "top-level mentions overlap"


@needs_shared
@pytest.mark.parametrize("name, nested", [("msnbc", 10), ("spotlight", 6), ("reuters-128", 0)])
def test_nested_labels_point_at_enclosing_parents(name, nested):
    articles = load_elevant(bench(name))
    children = [(a, lb) for a in articles for lb in a.labels if lb.parent is not None]
    assert len(children) == nested
    for article, child in children:
        parent = article.label(child.parent)
        assert child.id in parent.children
        assert parent.span_start <= child.span_start < child.span_end <= parent.span_end


@needs_shared
def test_real_label_fields():
    article = load_elevant(bench("msnbc"))[0]
    label = article.labels[0]
    assert isinstance(article.id, int) and article.title == "Bus16451112.txt"
    assert label.mention(article.text) == "Home Depot"
    assert label.type_ids and all(is_qid(t) for t in label.type_ids)
    nil = next(lb for a in load_elevant(bench("aida-conll-dev")) for lb in a.labels if lb.entity_id == NIL)
    assert nil.name == "Unknown" and not nil.is_linkable


# --------------------------------------------------------------------------- synthetic records


def article(article_id: Any = 1, **fields: Any) -> dict[str, Any]:
    record = {
        "id": article_id,
        "title": "t",
        "text": "Paris is in France.",
        "evaluation_span": [0, 19],
        "labels": [
            {"id": 0, "span": [0, 5], "entity_id": "Q90", "name": "Paris", "type": "Q515|Q5119"},
            {"id": 1, "span": [12, 18], "entity_id": NIL, "name": "Unknown", "type": "OTHER"},
        ],
    }
    record.update(fields)
    return record



def test_synthetic_article(tmp_path):
    [a] = load_elevant(write_lines(tmp_path / "toy.benchmark.jsonl", [article()]))
    assert a == ElevantArticle(
        id=1,
        title="t",
        text="Paris is in France.",
        evaluation_span=(0, 19),
        labels=(
            ElevantLabel(0, 5, "Q90", "Paris", "Q515|Q5119", None, (), id=0),
            ElevantLabel(12, 18, NIL, "Unknown", "OTHER", None, (), id=1),
        ),
        benchmark="toy",
    )
    assert a.labels[0].type_ids == ("Q515", "Q5119") and a.labels[1].type_ids == ()
    assert [lb.entity_id for lb in a.linkable_labels()] == ["Q90"]


def test_optional_fields_default(tmp_path):
    labels = [{"span": [0, 5], "entity_id": "Q90", "name": "Paris", "coref": None, "optional": True}]
    record = article(labels=labels)
    del record["evaluation_span"]
    [a] = load_elevant(write_lines(tmp_path / "x.jsonl", [record]), benchmark="mine")
    assert a.evaluation_span is None and a.benchmark == "mine"
    assert a.labels[0] == ElevantLabel(0, 5, "Q90", "Paris", None, None, (), id=0, optional=True, coref=False)


@pytest.mark.parametrize(
    "entity_id, linkable", [("Q42", True), ("Q0", False), (NIL, False), (NO_MAPPING, False), ("Unknown", False)]
)
def test_is_linkable(entity_id, linkable):
    assert ElevantLabel(0, 1, entity_id, "n", None, None, ()).is_linkable is linkable


@pytest.mark.parametrize(
    "path, name",
    [("a/msnbc.benchmark.jsonl", "msnbc"), ("b/x.benchmark.jsonl.gz", "x"), ("s3://b/k/y.jsonl", "y"), ("z", "z")],
)
def test_benchmark_name(path, name):
    assert benchmark_name(path) == name


# --------------------------------------------------------------------------- corrupted real files

LINE = 3  # the corrupted line (1-based); the label index used below exists in every msnbc article
LABEL = 3


def _drop(key: str) -> Callable[[dict], None]:
    return lambda a: a.pop(key)


def _label(change: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda a: change(a["labels"][LABEL])


def _set(key: str, value: Any) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


CORRUPTIONS = {
    "drop text": (_drop("text"), "text"),
    "drop labels": (_drop("labels"), "labels"),
    "labels not a list": (_set("labels", {}), "labels"),
    "title not a string": (_set("title", 7), "title"),
    "id is boolean": (_set("id", True), "id"),
    "evaluation span past the end": (lambda a: a.__setitem__("evaluation_span", [0, len(a["text"]) + 1]),
                                     "evaluation_span"),
    "label not an object": (lambda a: a["labels"].__setitem__(LABEL, "Q5"), f"labels[{LABEL}]"),
    "drop label span": (_label(lambda lb: lb.pop("span")), f"labels[{LABEL}].span"),
    "drop label entity_id": (_label(lambda lb: lb.pop("entity_id")), f"labels[{LABEL}].entity_id"),
    "drop label name": (_label(lambda lb: lb.pop("name")), f"labels[{LABEL}].name"),
    "span past the text": (_label(_set("span", [10, 10**6])), f"labels[{LABEL}].span"),
    "negative span": (_label(_set("span", [-1, 4])), f"labels[{LABEL}].span"),
    "start equals end": (_label(_set("span", [4, 4])), f"labels[{LABEL}].span"),
    "start after end": (_label(_set("span", [9, 4])), f"labels[{LABEL}].span"),
    "span of three": (_label(_set("span", [1, 2, 3])), f"labels[{LABEL}].span"),
    "span end a string": (_label(_set("span", [1, "4"])), f"labels[{LABEL}].span[1]"),
    "entity id not a string": (_label(_set("entity_id", 42)), f"labels[{LABEL}].entity_id"),
    "empty entity id": (_label(_set("entity_id", " ")), f"labels[{LABEL}].entity_id"),
    "type a list": (_label(_set("type", ["Q5"])), f"labels[{LABEL}].type"),
    "parent unknown": (_label(_set("parent", 9999)), f"labels[{LABEL}].parent"),
    "child unknown": (_label(_set("children", [9999])), f"labels[{LABEL}].children[0]"),
    "duplicate label id": (lambda a: a["labels"][LABEL].__setitem__("id", a["labels"][0]["id"]), f"labels[{LABEL}].id"),
    "optional not boolean": (_label(_set("optional", "yes")), f"labels[{LABEL}].optional"),
}


def corrupted_copy(tmp_path: Path, change: Callable[[dict], None] | None = None, raw_line: str | None = None) -> Path:
    """The real msnbc file with line LINE changed, written to tmp_path (shared data stays read-only)."""
    lines = bench(SOURCE).read_text(encoding="utf-8").splitlines()
    if raw_line is not None:
        lines[LINE - 1] = raw_line
    else:
        record = json.loads(lines[LINE - 1])
        change(record)
        lines[LINE - 1] = json.dumps(record)
    path = tmp_path / f"{SOURCE}.benchmark.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_located(error: DataError, path: Path, field: str, line: int = LINE) -> None:
    assert error.file == str(path)
    assert error.record.startswith(f"line {line}")
    assert error.field == field
    assert str(path) in str(error) and f"line {line}" in str(error) and field in str(error)


@needs_shared
@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corruption_raises_located_error(tmp_path, case):
    change, field = CORRUPTIONS[case]
    path = corrupted_copy(tmp_path, change)
    with pytest.raises(DataError) as info:
        load_elevant(path)
    assert_located(info.value, path, field)
    assert "(id " in info.value.record or case == "id is boolean"


@needs_shared
@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corruption_skip_mode_drops_one_article(tmp_path, case):
    path = corrupted_copy(tmp_path, CORRUPTIONS[case][0])
    articles, errors = load_elevant_with_report(path)
    assert len(articles) == COUNTS[SOURCE][0] - 1 and len(errors) == 1
    assert load_elevant(path, on_error="skip") == articles


@needs_shared
def test_broken_json_line(tmp_path):
    path = corrupted_copy(tmp_path, raw_line='{"id": 2, "title": "x", "text": ')
    with pytest.raises(DataError) as info:
        load_elevant(path)
    assert_located(info.value, path, "<json>")
    assert info.value.record == f"line {LINE}"
    assert len(load_elevant(path, on_error="skip")) == COUNTS[SOURCE][0] - 1


@needs_shared
def test_line_not_an_object(tmp_path):
    path = corrupted_copy(tmp_path, raw_line="[1, 2]")
    with pytest.raises(DataError) as info:
        load_elevant(path)
    assert_located(info.value, path, "<record>")


@needs_shared
def test_duplicate_article_id(tmp_path):
    lines = bench(SOURCE).read_text(encoding="utf-8").splitlines()
    path = tmp_path / "dup.benchmark.jsonl"
    path.write_text("\n".join(lines + [lines[1]]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_elevant(path)
    assert_located(info.value, path, "id", line=len(lines) + 1)
    assert "first seen at line 2" in info.value.message
    articles, errors = load_elevant_with_report(path)
    assert len(articles) == COUNTS[SOURCE][0] and len(errors) == 1


@needs_shared
def test_skip_mode_counts_several_bad_lines(tmp_path):
    lines = bench(SOURCE).read_text(encoding="utf-8").splitlines()
    lines[0] = "not json"
    lines[4] = json.dumps({**json.loads(lines[4]), "labels": None})
    path = tmp_path / "two_bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    articles, errors = load_elevant_with_report(path)
    assert len(articles) == COUNTS[SOURCE][0] - 2
    assert [(e.record.split(" (")[0], e.field) for e in errors] == [("line 1", "<json>"), ("line 5", "labels")]


@needs_shared
def test_gzip_copy_loads(tmp_path):
    path = tmp_path / f"{SOURCE}.benchmark.jsonl.gz"
    path.write_bytes(gzip.compress(bench(SOURCE).read_bytes()))
    articles = load_elevant(path)
    assert len(articles) == COUNTS[SOURCE][0] and articles[0].benchmark == SOURCE


def test_not_utf8_is_a_file_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"id": 1, "title": "\xff"}\n')
    with pytest.raises(DataError) as info:
        load_elevant(path, on_error="skip")
    assert info.value.record == FILE_RECORD and info.value.field == "<encoding>"


def test_invalid_on_error(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        load_elevant(write_lines(tmp_path / "x.jsonl", [article()]), on_error="ignore")  # type: ignore[arg-type]


def test_parent_must_enclose_child(tmp_path):
    record = article()
    record["labels"][1]["parent"] = 0  # "France" is not inside "Paris"
    record["labels"][0]["children"] = [1]
    with pytest.raises(DataError) as info:
        load_elevant(write_lines(tmp_path / "x.jsonl", [record]))
    assert info.value.field == "labels[1].parent" and "not inside" in info.value.message


def test_an_article_is_keyed_by_benchmark_and_id():
    """Ids repeat across benchmarks (every file numbers from 0); 1 and "1" are one article."""
    assert ElevantArticle(1, "", "x", None, (), "msnbc").key == "msnbc/1"
    assert ElevantArticle("1", "", "x", None, (), "msnbc").key == ElevantArticle(1, "", "y", None, (), "msnbc").key
