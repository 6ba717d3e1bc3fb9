"""The data stages: prepare (strict, counted skips, split), labelling heuristics, and `dvc repro`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from onegen_core.config import PrepareConfig
from onegen_core.data.elevant import ElevantArticle, ElevantLabel
from onegen_core.data.kb import Entity
from onegen_core.method.segments import Retrieval
from onegen_core.prepare.labelling import EntityNegatives, cap_multihop_labels, entity_linking_examples, text_windows

ROOT = Path(__file__).resolve().parents[2]


def test_prepare_counts_skips_and_fails_over_the_threshold(tmp_path, shared_data):
    from tasks.prepare import SkipRateExceeded, run

    recs = json.loads((shared_data / "hotpotqa" / "train_sample.json").read_text())
    del recs[3]["question"]  # one malformed record of 100
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps(recs))
    cfg = PrepareConfig(hotpotqa_train=[str(bad)], max_skip_rate=0.05, out_dir=str(tmp_path / "out"))
    report = run(cfg)
    entry = report["files"][str(bad)]
    assert (entry["records_in"], entry["records_out"], entry["skipped"]) == (100, 99, 1)
    assert entry["skipped_by_field"] == {"question": 1} and "question" in entry["skips"][0]
    cfg.max_skip_rate = 0.0
    with pytest.raises(SkipRateExceeded, match="1/100"):
        run(cfg)
    cfg.on_error = "raise"
    with pytest.raises(Exception, match="question"):
        run(cfg)


def test_prepare_refuses_a_question_in_both_splits(tmp_path, shared_data):
    from onegen_core.data import DataError
    from tasks.prepare import run

    dev = shared_data / "hotpotqa" / "dev_distractor_sample.json"
    cfg = PrepareConfig(hotpotqa_train=[str(dev)], hotpotqa_dev=str(dev), dev_train_count=100, out_dir=str(tmp_path))
    with pytest.raises(DataError, match="both a training and a held-out"):
        run(cfg)


def test_windows_never_split_a_mention():
    text = "aaaa bbbb cccc dddd eeee ffff"
    spans = [(8, 16), (20, 27)]
    wins = text_windows(text, spans, max_chars=10)
    assert wins[0][0] == 0 and wins[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(wins, wins[1:]))
    for s, e in spans:
        assert any(ws <= s and e <= we for ws, we in wins)


def label(i, s, e, eid):
    return ElevantLabel(s, e, eid, "n", None, None, (), id=i)


def test_entity_linking_examples_and_negatives():
    text = "Paris Hilton met Paris officials in France."
    art = ElevantArticle(7, "", text, None, (label(0, 0, 12, "Q1"), label(1, 17, 22, "Q90"), label(2, 36, 42, "<NIL>")), "b")
    kb_list = [Entity("Q1", "Paris Hilton", "a person"), Entity("Q90", "Paris", "a city"),
               Entity("Q2", "Paris, Texas", "a town"), Entity("Q3", "Berlin", "a city")]
    stats = Counter()
    neg = EntityNegatives(kb_list, hard=2, random=1)
    exs = entity_linking_examples(art, {e.id: e for e in kb_list}, neg, 1000, 0, stats)
    assert len(exs) == 1 and stats["el_nil_mentions"] == 1 and stats["el_mentions_linked"] == 2
    q_paris = exs[0].query("m1")
    assert q_paris.positives == ("Q90",) and "Q90" not in q_paris.negatives
    assert set(q_paris.negatives[:2]) <= {"Q1", "Q2"}  # same-name candidates first
    assert sum(isinstance(s, Retrieval) for s in exs[0].segments) == 2


def test_cap_multihop_labels_keeps_hard_negatives_first(shared_data):
    from onegen_core.config import ReconstructConfig
    from onegen_core.data import load_hotpotqa
    from onegen_core.prepare.multihop import hops_from_supporting_facts, reconstruct_multihop

    rec = load_hotpotqa(shared_data / "hotpotqa" / "train_sample.json")[0]
    ex = reconstruct_multihop(rec, hops_from_supporting_facts(rec), ReconstructConfig())
    capped = cap_multihop_labels(ex, positives=1, negatives_per_positive=2, seed=0)
    unit_doc = {u: d.id for d in ex.documents for u in d.unit_ids()}
    for q, full in zip(capped.queries, ex.queries):
        assert len(q.positives) == 1 and len(q.negatives) == 2
        gold = unit_doc[full.positives[0]]
        hard = {u for u in full.negatives if unit_doc[u] == gold}  # same paragraph, not supporting
        assert sum(u in hard for u in q.negatives) == min(2, len(hard))
        assert set(q.negatives) <= set(full.negatives)


@pytest.mark.slow
def test_dvc_repro_runs_the_data_stages_on_a_fresh_copy(tmp_path, shared_data):
    proj = tmp_path / "proj"
    for name in ("onegen_core", "tasks", "dvc.yaml", "params.yaml", ".dvc", ".dvcignore", "pyproject.toml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, proj / name if src.is_dir() else proj)
    os.symlink(shared_data.parent, tmp_path / "shared")  # params.yaml reads ../shared/data
    # dvc runs each stage's `python -m tasks.…` from PATH: make it this interpreter's environment
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(proj), "PATH": path}
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q"], dvc + ["repro", "label"]):
        done = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    report = json.loads((proj / "data" / "label" / "report.json").read_text())
    assert report["multihop_examples"] == 200 and report["el_examples"] > 0
    assert (proj / "data" / "prepared" / "report.json").is_file()
    first = (proj / "data" / "label" / "train.jsonl").read_text()
    again = subprocess.run(dvc + ["repro", "label"], cwd=proj, env=env, check=True, capture_output=True, text=True)
    assert "didn't change, skipping" in again.stdout and (proj / "data" / "label" / "train.jsonl").read_text() == first


def test_kb_titles_never_come_from_held_out_mention_texts():
    """A held-out article's mention text would hand the gold surface form to the mention-text ED
    baselines: titles come from the KB name, else a training article's mention, else the id."""
    from onegen_core.prepare.entity_kb import build_kb

    def lab(i, s, e, eid, name):
        return ElevantLabel(s, e, eid, name, None, None, (), id=i)

    train = ElevantArticle(1, "", "Obama met Merkel.", None,
                           (lab(0, 0, 5, "Q76", "Barack Obama"), lab(1, 10, 16, "Q567", "Unknown")), "train-b")
    held = ElevantArticle(2, "", "Bo and Mutti and Kohl.", None,
                          (lab(0, 0, 2, "Q76", "Barack Obama"), lab(1, 7, 12, "Q567", "Unknown"),
                           lab(2, 17, 21, "Q2518", "Unknown")), "held-b")
    entities, cov = build_kb([train, held], {"Barack Obama": "44th president."}, train_benchmarks={"train-b"})
    titles = {e.id: e.title for e in entities}
    assert titles == {"Q76": "Barack Obama", "Q567": "Merkel", "Q2518": "Q2518"}  # never "Bo", "Mutti", "Kohl"
    d = cov.to_dict()
    assert d["title_sources"] == {"entity_id": 1, "kb_name": 1, "training_mention": 1}
    assert (d["held_out_gold_entities"], d["held_out_gold_in_kb"], d["held_out_gold_with_kb_name"],
            d["held_out_gold_with_passage"]) == (3, 3, 1, 1)


def test_kb_pages_add_every_other_titled_page_once():
    """Pages no benchmark names join the evaluation KB as `page:<title>` entries; a page titled like an
    entity is that entity's own passage, not a second entity (case folded); an empty page is counted."""
    from onegen_core.prepare.entity_kb import page_entities

    kb = [Entity("Q76", "Barack Obama", "44th president."), Entity("Q90", "Paris", "")]
    pages = {"Barack Obama": "44th president.", "paris": "Capital.", "Lyon": " A city. ", "Empty": "  ",
             "LYON": "Same title again."}
    added, counts = page_entities(kb, pages)
    assert added == [Entity("page:Lyon", "Lyon", "A city.", None)]
    assert counts == {"added": 1, "pages": 5, "skipped_empty": 1, "skipped_entity_title": 3}


def test_prepare_writes_kb_pages_beside_an_unchanged_kb(tmp_path, shared_data):
    """`kb_pages.jsonl` holds the shared data's other pages; `kb.jsonl`, which training samples, is the
    same with and without it."""
    from onegen_core.data.kb import load_kb
    from onegen_core.data.multihop import load_2wiki
    from tasks import prepare

    hp, wiki = shared_data / "hotpotqa", shared_data / "2wikimultihopqa"
    el = shared_data / "entity_linking" / "elevant"
    common = dict(hotpotqa_train=[str(hp / "train_sample.json")], hotpotqa_dev="", dev_train_count=0,
                  wiki2_eval=[str(wiki / "dev_sample.jsonl")], elevant=[str(el / "spotlight.benchmark.jsonl")],
                  el_eval_benchmarks=[], kb_context_passages=[str(hp / "train_sample.json")])
    with_pages = prepare.run(PrepareConfig(out_dir=str(tmp_path / "a"), kb_pages=True, **common))
    prepare.run(PrepareConfig(out_dir=str(tmp_path / "b"), kb_pages=False, **common))
    assert (tmp_path / "a" / "kb.jsonl").read_bytes() == (tmp_path / "b" / "kb.jsonl").read_bytes()
    assert not (tmp_path / "b" / "kb_pages.jsonl").exists()
    pages = load_kb(tmp_path / "a" / "kb_pages.jsonl")
    titles = {e.title.casefold() for e in load_kb(tmp_path / "a" / "kb.jsonl")}
    assert pages and all(p.id == "page:" + p.title and p.title.casefold() not in titles for p in pages)
    assert len({p.title.casefold() for p in pages}) == len(pages)
    counts = with_pages["kb"]["pages"]
    assert counts["added"] == len(pages) and counts["pages"] == sum(counts.values()) - counts["added"]
    # 2Wiki's paragraphs are pages too, not only the HotpotQA ones
    two_wiki = {para.title for r in load_2wiki(wiki / "dev_sample.jsonl") for para in r.context}
    assert two_wiki & {p.title for p in pages}


def test_encode_appends_the_pages_to_the_kb_and_refuses_an_id_in_both(tmp_path):
    from onegen_core.config import EncodeConfig
    from onegen_core.data.errors import DataError
    from onegen_core.data.kb import write_kb
    from tasks.encode import kb_entities

    write_kb(tmp_path / "kb.jsonl", [Entity("Q1", "One", "first")])
    write_kb(tmp_path / "pages.jsonl", [Entity("page:Two", "Two", "second")])
    cfg = EncodeConfig(kb=str(tmp_path / "kb.jsonl"), kb_pages=str(tmp_path / "pages.jsonl"))
    assert [e.id for e in kb_entities(cfg)] == ["Q1", "page:Two"]
    # a page is encoded as its title alone, like the trained KB entries, unless its passage is asked for
    assert [e.description for e in kb_entities(cfg)] == ["first", ""]
    with_text = EncodeConfig(kb=str(tmp_path / "kb.jsonl"), kb_pages=str(tmp_path / "pages.jsonl"),
                             kb_pages_descriptions=True)
    assert [e.description for e in kb_entities(with_text)] == ["first", "second"]
    assert [e.id for e in kb_entities(EncodeConfig(kb=str(tmp_path / "kb.jsonl")))] == ["Q1"]
    write_kb(tmp_path / "pages.jsonl", [Entity("page:Two", "Two", "second"), Entity("Q1", "One", "again")])
    with pytest.raises(DataError, match=r"pages.jsonl: record entry 2: field 'id': 'Q1' is already an entity"):
        kb_entities(cfg)


def test_validation_split_per_task_counts_and_the_old_split_without_them():
    import random

    from onegen_core.prepare.split import validation_indices

    tasks = ["multihop"] * 200 + ["entity_linking"] * 945
    # no per-task count: exactly the split the label stage always made (10 % of everything)
    order = list(range(len(tasks)))
    random.Random(0).shuffle(order)
    assert validation_indices(tasks, 0.1, {}, 0) == set(order[:114])
    # a count for multi-hop, val_fraction for the other task, each in the same shuffled order
    val = validation_indices(tasks, 0.1, {"multihop": 40}, 0)
    by_task = Counter(tasks[i] for i in val)
    assert by_task == {"multihop": 40, "entity_linking": 94}
    assert [i for i in order if tasks[i] == "multihop"][:40] == sorted((i for i in val if tasks[i] == "multihop"),
                                                                        key=order.index)
    assert validation_indices(tasks, 0.1, {"multihop": 40}, 1) != val  # the seed moves it
    assert validation_indices(tasks, 0.0, {"multihop": 0}, 0) == set()
    # a count over half of a task (a small run) validates on half and trains on the rest
    small = validation_indices(["multihop"] * 20 + ["entity_linking"] * 30, 0.1, {"multihop": 40}, 0)
    assert Counter(("multihop" if i < 20 else "entity_linking") for i in small) == {"multihop": 10, "entity_linking": 3}


def test_validation_examples_are_capped_per_task_then_overall(tmp_path):
    from onegen_core.config import TrainDataConfig
    from onegen_core.method.segments import Document, Query, Retrieval, Text, TrainingExample
    from onegen_core.training.dataset import validation_examples

    rows = []
    for task, n in (("multihop", 5), ("entity_linking", 7)):
        for i in range(n):
            ex = TrainingExample(f"{task}-{i}", task, (Text("q", False), Retrieval("rq0"), Text("a", True)),
                                 (Query("rq0", (f"{task}-{i}-d",)),), (Document(f"{task}-{i}-d", ("d",)),))
            rows.append(json.dumps(ex.to_dict()))
    f = tmp_path / "val.jsonl"
    f.write_text("\n".join(rows) + "\n")
    cfg = TrainDataConfig(val_file=str(f), tasks=["multihop", "entity_linking"], val_max_examples=0,
                          val_max_examples_by_task={"entity_linking": 3})
    got = validation_examples(cfg)
    assert Counter(e.task for e in got) == {"multihop": 5, "entity_linking": 3}
    # a fixed, hash-chosen subset: the same examples whatever the file order
    g = tmp_path / "val_reversed.jsonl"
    g.write_text("\n".join(reversed(rows)) + "\n")
    again = validation_examples(TrainDataConfig(val_file=str(g), tasks=["multihop", "entity_linking"], val_max_examples=0,
                                                val_max_examples_by_task={"entity_linking": 3}))
    assert sorted(e.id for e in again) == sorted(e.id for e in got)
    cfg2 = TrainDataConfig(val_file=str(f), tasks=["multihop", "entity_linking"], val_max_examples=6,
                           val_max_examples_by_task={"entity_linking": 3})
    assert [e.id for e in validation_examples(cfg2)] == [e.id for e in got][:6]
