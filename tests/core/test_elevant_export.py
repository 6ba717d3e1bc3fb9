"""The ELEVANT linked-articles export (onegen_core.data.elevant): the exact bytes ELEVANT's own
`link_benchmark.py` would write for an article, the files and metadata per benchmark, and the source
objects read back from gzip and BOM-prefixed benchmark files."""
from __future__ import annotations

import gzip
import json

import pytest

from onegen_core.data.elevant import (
    NIL,
    article_sources,
    exported_predictions,
    linked_article,
    load_elevant,
    write_linked_articles,
)
from onegen_core.data.errors import DataError
from onegen_core.evaluation.linking import PredictedMention

# a benchmark article with every field the export copies, in an order unlike ELEVANT's, labels unsorted
SOURCE = {"id": 3, "title": "T", "text": "Ünïcode Paris and Berlin.", "extra": 1, "title_synonyms": [],
          "labels": [{"id": 1, "span": [18, 24], "entity_id": "Q64", "name": "Berlin", "type": "OTHER"},
                     {"id": 0, "span": [8, 13], "entity_id": "Q90", "name": "Paris", "type": "OTHER"}],
          "sections": [[0, 25]], "url": "", "hyperlinks": [[8, 13, "Q90"]], "evaluation_span": None}
MENTIONS = [PredictedMention(18, 24, None, None, ["Q64", "Q1"]), PredictedMention(8, 13, "Q90", 0.5, ["Q90", "Q2"])]
# ELEVANT's key order; ASCII escapes; mentions by span; <NIL> joins the sorted candidates of an unlinked
# mention; an empty `title_synonyms` and the unknown `extra` are dropped, an empty `url` kept; a null
# `evaluation_span` becomes the whole text; labels sorted by id
EXPORTED = (
    '{"id": 3, "title": "T", "text": "\\u00dcn\\u00efcode Paris and Berlin.", "hyperlinks": [[8, 13, "Q90"]], '
    '"url": "", "entity_mentions": [{"span": [8, 13], "id": "Q90", "recognized_by": "exp", "linked_by": "exp", '
    '"candidates": ["Q2", "Q90"]}, {"span": [18, 24], "id": "<NIL>", "recognized_by": "exp", "linked_by": "exp", '
    '"candidates": ["<NIL>", "Q1", "Q64"]}], "evaluation_span": [0, 25], "labels": [{"id": 0, "span": [8, 13], '
    '"entity_id": "Q90", "name": "Paris", "type": "OTHER"}, {"id": 1, "span": [18, 24], "entity_id": "Q64", '
    '"name": "Berlin", "type": "OTHER"}], "sections": [[0, 25]]}'
)


def test_linked_article_is_byte_for_byte_elevants_form():
    assert json.dumps(linked_article(SOURCE, MENTIONS, "exp")) == EXPORTED


def test_a_bare_text_gets_an_empty_title_the_whole_span_and_no_labels():
    """The service's `link --json` article: only an id and a text."""
    art = linked_article({"id": 0, "text": "Rome."}, [PredictedMention(0, 4, "Q220", 0.9, ["Q220"])], "onegen")
    assert json.dumps(art) == ('{"id": 0, "title": "", "text": "Rome.", "entity_mentions": [{"span": [0, 4], '
                               '"id": "Q220", "recognized_by": "onegen", "linked_by": "onegen", '
                               '"candidates": ["Q220"]}], "evaluation_span": [0, 5], "labels": []}')
    assert list(linked_article({"id": 1, "text": "x"}, [], "onegen")) == ["id", "title", "text", "evaluation_span",
                                                                           "labels"]


def test_exported_predictions_mark_unlinked_mentions_nil_and_leave_the_input_alone():
    preds = {"b/1": MENTIONS}
    out = exported_predictions(preds)
    assert [m.entity_id for m in out["b/1"]] == [NIL, "Q90"]
    assert out["b/1"][1] == MENTIONS[1] and MENTIONS[0].entity_id is None


def _benchmark(tmp_path, name: str, articles: list[dict], gz: bool = False):
    text = "\ufeff" + "".join(json.dumps(a) + "\n" for a in articles) + "\n"
    path = tmp_path / (f"{name}.benchmark.jsonl" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def test_sources_read_gzip_and_bom_files_and_key_articles_by_benchmark(tmp_path):
    plain = {"id": 9, "title": "", "text": "Rome.", "labels": []}
    files = [_benchmark(tmp_path, "mini", [SOURCE, plain], gz=True), _benchmark(tmp_path, "other", [plain])]
    assert article_sources(files) == {"mini/3": SOURCE, "mini/9": plain, "other/9": plain}


def test_sources_validate_as_the_loader_does(tmp_path):
    bad = _benchmark(tmp_path, "bad", [{"id": 1, "title": "", "text": "ab", "labels": [{"span": [0, 5]}]}])
    with pytest.raises(DataError, match=r"labels\[0\]\.span"):
        article_sources([bad])


def test_write_linked_articles_one_file_and_metadata_per_benchmark(tmp_path):
    files = [_benchmark(tmp_path, "mini", [SOURCE], gz=True), _benchmark(tmp_path, "other", [{**SOURCE, "id": 4}])]
    articles = [a for f in files for a in load_elevant(f)]
    out = tmp_path / "out"
    written = write_linked_articles(articles, {"mini/3": MENTIONS}, article_sources(files), out, "exp", "déjà", 1.5)
    assert written == [out / "exp.mini.linked_articles.jsonl", out / "exp.other.linked_articles.jsonl"]
    assert (out / "exp.mini.linked_articles.jsonl").read_text() == EXPORTED + "\n"
    other = json.loads((out / "exp.other.linked_articles.jsonl").read_text())
    assert other["id"] == 4 and "entity_mentions" not in other  # no predictions: no mentions
    meta = (out / "exp.mini.metadata.json").read_text()
    assert meta.startswith('{"experiment_name": "exp", "experiment_description": "d\\u00e9j\\u00e0", '
                           '"linker_name": "onegen", "timestamp": "') and meta.endswith('", "linking_time": 1.5}')
    assert sorted(p.name for p in out.iterdir()) == ["exp.mini.linked_articles.jsonl", "exp.mini.metadata.json",
                                                    "exp.other.linked_articles.jsonl", "exp.other.metadata.json"]


def test_an_article_missing_from_the_sources_is_an_error(tmp_path):
    articles = load_elevant(_benchmark(tmp_path, "mini", [SOURCE]))
    with pytest.raises(ValueError, match=r"ELEVANT export: article 'mini/3' is in none of evaluate\.elevant's files"):
        write_linked_articles(articles, {}, {}, tmp_path / "out", "exp", "d", None)
    assert not (tmp_path / "out").exists()
