"""`onegen ask`, `onegen link`, `onegen index add|info` on the tiny trained checkpoint (in-process through
`flows.cli.main`, as the `onegen` entry point calls it): JSON shapes, the terminal output, a user's
documents added, resumed, refused as duplicates or updated, an ANN index past a size, and the clear
errors for an index of another checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.serving.conftest import ARTHUR, DERRICKSON, OBAMA, cli_options


def onegen(capsys, *argv: str) -> str:
    from flows.cli import main

    capsys.readouterr()
    main(list(argv))
    return capsys.readouterr().out


def fails(capsys, *argv: str) -> str:
    """The one-line message a command ends with (SystemExit), for errors a user can fix."""
    from flows.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert isinstance(e.value.code, str), e.value.code
    return e.value.code


# ------------------------------------------------------------------------------------------ ask

def test_ask_json_prints_one_object_per_question(capsys, paths, tmp_path):
    qfile = tmp_path / "questions.txt"
    qfile.write_text(f"{ARTHUR}\n\n{DERRICKSON}\n")
    lines = onegen(capsys, "ask", "--file", str(qfile), "--json", "--top-k", "2", *cli_options(paths)).splitlines()
    objs = [json.loads(line) for line in lines]
    assert [o["question"] for o in objs] == [ARTHUR, DERRICKSON] and [o["answer"] for o in objs] == ["Arthur's Magazine", "yes"]
    for o in objs:
        assert {"answer", "text", "retrievals", "counts", "finish_reason", "model"} <= set(o)
        assert o["finish_reason"] == "eos" and o["counts"]["retrievals"] == len(o["retrievals"]) == 2
        assert all(set(h) == {"rank", "id", "doc_id", "title", "text", "score"} and len(e["hits"]) == 2
                   for e in o["retrievals"] for h in e["hits"])
        assert o["batch"]["rows"] == 2  # the questions of a file are batched


def test_ask_streams_the_text_and_prints_each_retrieval(capsys, paths):
    out = onegen(capsys, "ask", ARTHUR, *cli_options(paths))
    assert out.startswith(f"Q: {ARTHUR}\n[RQ]\n  ↳ retrieval 1:\n")
    assert "   1.  0." in out and "Arthur's Magazine: " in out and "[arthurs-magazine#" in out
    assert "↳ retrieval 2:" in out and "<FINAL-ANSWER>Arthur's Magazine</FINAL-ANSWER>" in out
    assert "answer: Arthur's Magazine\n(eos; " in out and "2 retrievals" in out


# ------------------------------------------------------------------------------------------ link

def test_link_json_is_the_elevant_linked_article_shape(capsys, paths, tmp_path):
    from onegen_core.data import load_elevant

    art = json.loads(onegen(capsys, "link", OBAMA, "--json", *cli_options(paths)))
    # the keys, in order, of the ELEVANT export (onegen_core.data.elevant.linked_article)
    assert list(art) == ["id", "title", "text", "entity_mentions", "evaluation_span", "labels"]
    assert art["entity_mentions"] == [
        {"span": [0, 5], "id": "Q76", "recognized_by": "onegen", "linked_by": "onegen",
         "candidates": sorted(art["entity_mentions"][0]["candidates"])},
        {"span": [18, 26], "id": "Q18094", "recognized_by": "onegen", "linked_by": "onegen",
         "candidates": sorted(art["entity_mentions"][1]["candidates"])}]
    assert "Q76" in art["entity_mentions"][0]["candidates"] and art["evaluation_span"] == [0, len(OBAMA)]
    out = tmp_path / "linked.jsonl"
    out.write_text(json.dumps(art) + "\n")
    assert load_elevant(out)[0].text == OBAMA  # ELEVANT's own article format reads it


def test_link_file_of_articles_keeps_their_ids_and_prints_spans(capsys, paths, tmp_path):
    arts = tmp_path / "articles.jsonl"
    arts.write_text(json.dumps({"id": 17, "title": "a", "text": OBAMA}) + "\n"
                    + json.dumps({"id": 18, "text": "Paris is the capital of France."}) + "\n")
    lines = onegen(capsys, "link", "--file", str(arts), "--json", *cli_options(paths)).splitlines()
    assert [json.loads(x)["id"] for x in lines] == [17, 18] and json.loads(lines[0])["title"] == "a"
    out = onegen(capsys, "link", OBAMA, "--top-k", "2", *cli_options(paths))
    assert out.splitlines()[0] == "[Obama](Q76) was born in [Honolulu](Q18094)."
    assert "[0, 5)" in out and "-> Q76 Barack Obama (0." in out and "candidates: " in out


# ------------------------------------------------------------------------------------------ index

def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


DOCS = [{"id": f"doc{i}", "title": f"Doc {i}", "text": f"Document {i} is about topic {i}. It has two sentences."}
        for i in range(3)]


def test_index_add_resumes_refuses_changed_ids_and_updates_them(capsys, paths, tmp_path):
    idx = str(tmp_path / "idx")
    opts = cli_options(paths, index=idx)
    first = json.loads(onegen(capsys, "index", "add", _jsonl(tmp_path / "a.jsonl", DOCS[:2]), "--json", *opts))
    assert (first["documents_new"], first["documents_encoded_now"], first["units_in_index"]) == (2, 2, 4)
    assert first["table"] == "units" and first["granularity"] == "sentence"
    # an interrupted run left the first two: the full file adds only the third
    full = _jsonl(tmp_path / "b.jsonl", DOCS)
    again = json.loads(onegen(capsys, "index", "add", full, "--json", *opts))
    assert (again["documents_unchanged"], again["documents_new"], again["documents_encoded_now"]) == (2, 1, 1)
    assert again["units_in_index"] == 6
    assert json.loads(onegen(capsys, "index", "add", full, "--json", *opts))["documents_encoded_now"] == 0

    changed = _jsonl(tmp_path / "c.jsonl", [{**DOCS[1], "text": "Document 1 was rewritten entirely."}])
    msg = fails(capsys, "index", "add", changed, *opts)
    assert "'doc1'" in msg and "--update" in msg and f"{idx}/units" in msg
    upd = json.loads(onegen(capsys, "index", "add", changed, "--update", "--json", *opts))
    assert upd["documents_updated"] == 1 and upd["units_in_index"] == 5  # two sentences became one

    from tasks.adapters.lance_index import LanceIndex

    stored = LanceIndex(idx, "units").units_of(["doc1"])["doc1"]
    assert [u.text for u in stored] == ["Document 1 was rewritten entirely."]


def test_index_add_errors_name_the_line_and_field(capsys, paths, tmp_path):
    opts = cli_options(paths, index=str(tmp_path / "idx"))
    cases = [
        ([DOCS[0], DOCS[0]], ":2: field 'id' 'doc0' repeats line 1"),
        ([{"id": "x", "text": ""}], ":1: field 'text': expected a non-empty string"),
        ([{"title": "t", "text": "t"}], ":1: field 'id': expected a non-empty string, got missing"),
        ([{"id": "x", "text": "see [RD] here"}], "field 'text': contains the special token '[RD]'"),
        # the checkpoint tokenizer's own control token, found once the checkpoint is loaded
        ([DOCS[0], {"id": "x", "title": "<|endoftext|>", "text": "t"}],
         "document 'x': field 'title': contains the tokenizer's control token '<|endoftext|>'"),
        ([{"id": "a#1", "text": "x"}], "contains '#'"),
    ]
    for n, (rows, words) in enumerate(cases):
        assert words in fails(capsys, "index", "add", _jsonl(tmp_path / f"bad{n}.jsonl", rows), *opts)
    assert "no such file" in fails(capsys, "index", "add", str(tmp_path / "none.jsonl"), *opts)


def test_index_add_reads_a_folder_of_text_files_and_builds_ann_past_a_size(capsys, paths, tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# Magazines\n\nArthur's Magazine was a periodical. It was founded in 1844.\n\n"
                                 "## More\n\nFirst for Women started in 1989.\n")
    (folder / "sub" / "b.txt").write_text("Honolulu is in Hawaii.\nIt is a city.\n")
    (folder / ".hidden.txt").write_text("never read")
    idx = str(tmp_path / "idx")
    opts = cli_options(paths, index=idx)
    rep = json.loads(onegen(capsys, "index", "add", str(folder), "--json", *opts))
    assert rep["documents"] == 3 and rep["units_in_index"] == 5 and not rep["ann_index"]
    from tasks.adapters.lance_index import LanceIndex

    units = {r.id: r for r in LanceIndex(idx, "units").records()}
    assert set(units) == {"a.md:0#0", "a.md:0#1", "a.md:1#0", "sub/b.txt:0#0", "sub/b.txt:0#1"}
    assert units["a.md:1#0"].title == "Magazines" and units["sub/b.txt:0#0"].title == "b"
    assert units["sub/b.txt:0#1"].doc_text == "Honolulu is in Hawaii. It is a city."

    many = [{"id": f"n{i}", "title": "", "text": f"Note number {i}."} for i in range(300)]
    rep = json.loads(onegen(capsys, "index", "add", _jsonl(tmp_path / "many.jsonl", many), "--ann-min-rows", "300",
                            "--granularity", "document", "--json", *opts))
    assert rep["ann_index"] and rep["units_in_index"] == 305
    info = json.loads(onegen(capsys, "index", "info", "--json", *opts))
    (units_table,) = info["tables"]
    assert units_table["index_type"].startswith("Ivf") and units_table["rows"] == 305
    assert units_table["checkpoint_id"] == info["checkpoint_id"] and units_table["matches_checkpoint"] is True
    # what the table holds: each add's source, and its titles (the notes' headings and file names; the
    # 300 untitled notes have none)
    assert units_table["sources"] == [{"source": str(folder), "documents": 3},
                                      {"source": str(tmp_path / "many.jsonl"), "documents": 300}]
    assert units_table["titles"] == {"distinct": 2, "sample": ["Magazines", "b"]}
    out = onegen(capsys, "index", "info", *opts)
    assert f"sources: {folder} (3 documents); {tmp_path / 'many.jsonl'} (300 documents)" in out
    assert "titles: 2 distinct, most frequent: Magazines, b" in out


def test_index_info_describes_each_table(capsys, paths):
    out = onegen(capsys, "index", "info", *cli_options(paths))
    assert "units: 10 rows (5 documents), dim 64, exact" in out and "entities: 5 rows (5 documents)" in out
    assert out.count("(matches)") == 2
    # the tiny project's tables were written by code that records no source: said, not guessed
    assert out.count("sources: unknown (not recorded when the table was written)") == 2
    assert "titles: 5 distinct, most frequent: " in out


# ------------------------------------------------------------------------------------------ mismatch

@pytest.fixture(scope="module")
def other_checkpoint(paths, tmp_path_factory):
    """The tiny checkpoint with one weight nudged: another checkpoint id, the same architecture."""
    import torch

    from onegen_core.method.backbone import checkpoint_id, load_pretrained, read_meta, save_checkpoint

    lm, tok, _ = load_pretrained(paths["checkpoint"])
    with torch.no_grad():
        lm.get_input_embeddings().weight[0, 0] += 1.0
    out = save_checkpoint(lm, tok, tmp_path_factory.mktemp("other") / "ckpt",
                          {k: v for k, v in read_meta(paths["checkpoint"]).items() if k != "checkpoint_id"})
    assert checkpoint_id(out) != checkpoint_id(paths["checkpoint"])
    return str(out)


def test_an_index_of_another_checkpoint_is_refused_naming_both(capsys, paths, other_checkpoint):
    from onegen_core.method.backbone import checkpoint_id

    mine, theirs = checkpoint_id(paths["checkpoint"]), checkpoint_id(other_checkpoint)
    opts = cli_options(paths, checkpoint=other_checkpoint)
    for argv in (["ask", ARTHUR], ["link", OBAMA], ["index", "add", paths["passages"]]):
        msg = fails(capsys, *argv, *opts)
        assert mine in msg and theirs in msg and other_checkpoint in msg, msg
    out = onegen(capsys, "index", "info", *opts)
    assert "DOES NOT MATCH" in out


def test_a_missing_checkpoint_or_index_is_one_clear_line(capsys, paths, tmp_path):
    assert "no such directory" in fails(capsys, "ask", ARTHUR, *cli_options(paths, checkpoint=str(tmp_path / "no")))
    empty = tmp_path / "empty_checkpoint"
    empty.mkdir()
    assert "no config.json, so not a saved checkpoint" in fails(capsys, "ask", ARTHUR,
                                                                 *cli_options(paths, checkpoint=str(empty)))
    err = fails(capsys, "ask", ARTHUR, *cli_options(paths, index=str(tmp_path / "noindex")))
    assert "index " in err and "noindex: no such directory" in err
    assert not (tmp_path / "noindex").exists()  # asking creates nothing
    (tmp_path / "emptyindex").mkdir()
    assert "no table 'units'" in fails(capsys, "ask", ARTHUR, *cli_options(paths, index=str(tmp_path / "emptyindex")))
    assert "give a QUESTION or --file" in fails(capsys, "ask", *cli_options(paths))


def test_a_binary_file_is_one_line_naming_file_and_line(capsys, paths, tmp_path):
    binary = tmp_path / "q.txt"
    binary.write_bytes(b"Who founded Alpha?\n\xff\xfe\x00 binary\n")
    err = fails(capsys, "ask", "--file", str(binary), *cli_options(paths))
    assert err == f"onegen ask: {binary}: line 2: not UTF-8 text (byte 19: b'\\xff'); give a UTF-8 text file"
    assert "line 2: not UTF-8 text" in fails(capsys, "link", "--file", str(binary), *cli_options(paths))


def test_index_add_refuses_links_out_of_the_folder_and_says_so(capsys, paths, tmp_path):
    """A folder's symlink to a file outside it (`notes/pw.txt -> /etc/passwd`) is not read, not served, and
    reported; a link that stays inside the folder is read as usual."""
    folder = tmp_path / "notes"
    folder.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the secret line\n")
    (folder / "a.txt").write_text("Honolulu is in Hawaii.\n")
    (folder / "pw.txt").symlink_to(secret)
    (folder / "again.txt").symlink_to(folder / "a.txt")  # inside: fine
    idx = str(tmp_path / "idx")
    rep = json.loads(onegen(capsys, "index", "add", str(folder), "--json", *cli_options(paths, index=idx)))
    assert rep["links_refused"] == ["pw.txt"] and rep["documents"] == 2
    from tasks.adapters.lance_index import LanceIndex

    assert not any("secret" in r.text for r in LanceIndex(idx, "units").records())
    out = onegen(capsys, "index", "add", str(folder), *cli_options(paths, index=str(tmp_path / "idx2")))
    assert "refused 1 link(s) leading out of" in out and "pw.txt" in out
    only_link = tmp_path / "only"
    only_link.mkdir()
    (only_link / "pw.txt").symlink_to(secret)
    err = fails(capsys, "index", "add", str(only_link), *cli_options(paths, index=str(tmp_path / "idx3")))
    assert "no .txt or .md files (1 link(s) leading out of it refused)" in err


def test_index_add_refuses_sentences_into_the_entity_table(capsys, paths, tmp_path):
    docs = _jsonl(tmp_path / "e.jsonl", [{"id": "Q1", "title": "One", "text": "First. Second."}])
    err = fails(capsys, "index", "add", docs, "--table", "entities", "--granularity", "sentence",
                *cli_options(paths, index=str(tmp_path / "idx")))
    assert "takes whole documents, one [RD] an entity; --granularity sentence is refused" in err
    assert not (tmp_path / "idx").exists()  # refused before anything was created


def test_a_lone_surrogate_in_index_add_names_file_line_and_field(capsys, paths, tmp_path):
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"id": "a", "title": "A", "text": "fine"}\n{"id": "b", "title": "B", "text": "half \\ud800 a"}\n')
    err = fails(capsys, "index", "add", str(docs), *cli_options(paths, index=str(tmp_path / "idx")))
    assert f"{docs}:2: field 'text': a lone surrogate" in err


def test_two_writers_on_one_table_end_with_each_document_once(paths, tmp_path):
    """Two `onegen index add` processes on one table used to both exit 0 and leave every unit twice. The
    test holds the table's writer lock while both start, so both must wait; released, they run one after
    the other, and the second finds the first one's documents already there."""
    import os
    import subprocess
    import sys
    import time

    from tasks.adapters.lance_index import LanceIndex
    from tasks.adapters.table_lock import writer_lock

    docs = _jsonl(tmp_path / "d.jsonl", [{"id": f"d{i}", "title": "T", "text": f"Note {i}. More {i}."}
                                         for i in range(12)])
    idx = str(tmp_path / "idx")
    cmd = [sys.executable, "-m", "flows.cli", "index", "add", docs, "--json", *cli_options(paths, index=idx)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with writer_lock(idx, "units"):
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        lock_file = tmp_path / "idx" / ".units.writer.lock"
        time.sleep(10)  # both load the model and reach the lock (the lock serialises them either way)
        assert all(p.poll() is None for p in procs), "a writer finished while the lock was held"
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    reports = sorted((json.loads(o.strip().splitlines()[-1]) for o, _ in outs), key=lambda r: r["documents_new"])
    assert [(r["documents_new"], r["documents_unchanged"]) for r in reports] == [(0, 12), (12, 0)]
    ids = [r.id for r in LanceIndex(idx, "units").records()]
    assert len(ids) == len(set(ids)) == 24  # 12 documents, 2 sentences each, once
    assert lock_file.is_file()


def test_index_check_finds_a_table_written_twice_and_repair_mends_it(capsys, paths, tmp_path):
    """A table whose units were appended twice (two writers before the lock) is refused by every search;
    `index check` says so and exits 1, `index repair` keeps one row of each unit, and search works again."""
    import numpy as np

    from tasks.adapters.lance_index import LanceIndex

    docs = _jsonl(tmp_path / "d.jsonl", [{"id": f"d{i}", "title": "T", "text": f"Note {i}. More {i}."}
                                         for i in range(5)])
    idx = str(tmp_path / "idx")
    opts = cli_options(paths, index=idx)
    onegen(capsys, "index", "add", docs, *opts)
    table = LanceIndex(idx, "units")
    rows = table.table.to_arrow().to_pylist()
    table.add(table.records()[:4], np.array([r["vector"] for r in rows[:4]], np.float32))  # the second writer
    assert len(LanceIndex(idx, "units")) == 14
    with pytest.raises(ValueError, match="duplicate unit ids"):
        LanceIndex(idx, "units").search(np.ones((1, table.dim), np.float32), 1)
    with pytest.raises(SystemExit) as e:
        onegen(capsys, "index", "check", *opts)
    assert e.value.code == 1
    assert "units: 14 rows; DAMAGED: 4 unit ids stored more than once" in capsys.readouterr().out
    report = json.loads(onegen(capsys, "index", "repair", "--json", *opts))
    assert report["tables"][0]["rows_removed"] == 4 and report["ok"]
    assert "units: 10 rows; ok" in onegen(capsys, "index", "check", *opts)
    mended = LanceIndex(idx, "units")
    assert sorted(r.id for r in mended.records()) == sorted(r.id for r in table.records()[:10])
    assert mended.search(np.ones((1, table.dim), np.float32), 1)[0]  # searchable again


def test_a_bad_line_of_a_link_jsonl_names_file_line_and_field(capsys, paths, tmp_path):
    texts = tmp_path / "t.jsonl"
    texts.write_text('{"id": 1, "text": "Barack Obama was born in Honolulu."}\n'
                     '{"id": 2, "text": "He wrote [RQ] here."}\n')
    err = fails(capsys, "link", "--file", str(texts), *cli_options(paths))
    assert err == f"onegen link: {texts}:2: field 'text': contains the special token '[RQ]'; remove or reword it"
    texts.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": "Hi <|endoftext|> there"}\n')
    err = fails(capsys, "link", "--file", str(texts), *cli_options(paths))
    assert err == (f"onegen link: {texts}:2: field 'text': contains the tokenizer's control token '<|endoftext|>', "
                   f"which only the model writes")
    texts.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": "  "}\n')
    assert fails(capsys, "link", "--file", str(texts), *cli_options(paths)) == f"onegen link: {texts}:2: field 'text': empty"
