"""`tasks.report.headline` on hand-written metrics: exact rows, exact terminal and markdown text, one-line
failures (a missing file, a missing key, a document without its block), and `--check` catching a drifted block."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.report import headline as hl

ROOT = Path(__file__).resolve().parents[2]

EVALUATE = {
    "checkpoint_id": "c0ffee",
    "multihop": {"hotpotqa": {"distractor": {
        "onegen": {"questions": 2, "em": 0.5, "f1": 0.75, "recall_at_1_subquery": 2 / 3},
        "minilm": {"questions": 2, "em": 0.0, "f1": 0.25, "recall_at_1_subquery": 1 / 3},
    }}},
    "entity_linking": {"articles": 3, "systems": {
        "onegen": {"all": {"ed": {"f1": 0.125}}},
        "bm25": {"all": {"ed": {"f1": 1.0}}},
    }},
    "seconds": 12.0,
    "mlflow": {"run_id": "evalrun123456", "parent_run_id": "trainrun", "tracking_uri": "sqlite:///mlruns.db"},
}
TRAIN = {"ray_checkpoint": "runs/ray/onegen-1/checkpoint_2026-12-06_17-17-43.612830", "ray_run": "onegen-1",
         "mlflow_run_id": "trainrun", "mlflow_tracking_uri": "sqlite:///mlruns.db", "seconds": 1519.0}
ENCODE = {"seconds": 87.4}


def write_metrics(folder: Path) -> Path:
    for name, doc in (("evaluate", EVALUATE), ("train", TRAIN), ("encode", ENCODE)):
        (folder / f"{name}.json").write_text(json.dumps(doc))
    return folder


def test_rows_from_a_tiny_evaluate_file_are_exact():
    rows = hl.rows_from(EVALUATE)
    assert [(r.label, r.cells) for r in rows] == [
        ("HotpotQA distractor", ("66.7 / 50.0 / 75.0", "33.3 / 0.0 / 25.0", "–")),
        ("Entity linking, ED F1", ("12.5", "–", "100.0")),
    ]
    assert rows[1].source == "evaluate.json: entity_linking.systems.<system>.all.ed.f1"


def test_headline_rows_read_the_folder(tmp_path):
    assert hl.headline_rows(write_metrics(tmp_path)) == hl.rows_from(EVALUATE)


def test_the_committed_run_gives_at_most_five_rows():
    assert len(hl.headline_rows(ROOT / "metrics")) <= 5


def test_terminal_table_is_aligned_plain_text(tmp_path):
    text = hl.render_terminal(hl.load_headline(write_metrics(tmp_path)))
    assert text.splitlines() == [
        "Run trained on 2026-12-06, checkpoint c0ffee (machine: see docs/RESULTS.md)",
        "",
        "R@1 / EM / F1 (%)       OneGen               MiniLM pipeline     BM25",
        "HotpotQA distractor     66.7 / 50.0 / 75.0   33.3 / 0.0 / 25.0   –",
        "Entity linking, ED F1   12.5                 –                   100.0",
        "",
        "Held out: 2 HotpotQA questions, 3 entity-linking articles.",
        hl.MEASURES,
        "Full report: reports/evaluate/report.md",
        "MLflow: training run trainrun, evaluate run evalrun1… in sqlite:///mlruns.db (browse: `onegen ui`)",
    ]
    assert "{" not in text  # no raw JSON dump


def test_markdown_table(tmp_path):
    text = hl.render_markdown(hl.load_headline(write_metrics(tmp_path)))
    assert text.splitlines()[:4] == [
        "| R@1 / EM / F1 (%) | OneGen | MiniLM pipeline | BM25 |",
        "|---|---:|---:|---:|",
        "| HotpotQA distractor | 66.7 / 50.0 / 75.0 | 33.3 / 0.0 / 25.0 | – |",
        "| Entity linking, ED F1 | 12.5 | – | 100.0 |",
    ]
    assert text.splitlines()[-1] == "Stage times on that machine: `train` 1,519 s, `encode` 87 s, `evaluate` 12 s."


@pytest.mark.parametrize("checkpoint, date", [
    ("runs/ray/onegen-1/checkpoint_2026-12-06_17-17-43.612830", "2026-12-06"),
    ("models/core", "date not recorded"),
])
def test_run_date_comes_from_the_ray_checkpoint_name(checkpoint, date):
    assert hl.run_record({**TRAIN, "ray_checkpoint": checkpoint}, EVALUATE).date == date


def test_a_missing_key_names_the_file_and_the_key():
    broken = json.loads(json.dumps(EVALUATE))
    del broken["multihop"]["hotpotqa"]["distractor"]["minilm"]["f1"]
    with pytest.raises(hl.HeadlineError, match=r"^evaluate.json: no key multihop.hotpotqa.distractor.minilm.f1$"):
        hl.rows_from(broken)


def test_a_setting_the_run_left_out_is_left_out():
    linking_only = {"multihop": {"hotpotqa": {}}, "entity_linking": EVALUATE["entity_linking"]}
    assert [r.label for r in hl.rows_from(linking_only)] == ["Entity linking, ED F1"]
    with pytest.raises(hl.HeadlineError, match="no multi-hop set and no entity linking"):
        hl.rows_from({"multihop": {}})


def test_missing_metrics_give_one_line_not_a_traceback(tmp_path, capsys):
    assert hl.main(["--metrics", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"headline: no {tmp_path}/evaluate.json: run `make run` to write it "
                   "(a fresh clone has it committed)\n")


def test_check_fails_on_a_drifted_block_and_readme_rewrites_it(tmp_path, capsys):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    metrics = str(ROOT / "metrics")
    assert hl.main(["--metrics", metrics, "--check", str(readme)]) == 0
    text = readme.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| HotpotQA distractor | "))
    drifted = text.replace(row, row.replace("| HotpotQA distractor | ", "| HotpotQA distractor | 1", 1))
    assert drifted != text  # one figure of the block changed by hand
    readme.write_text(drifted)
    assert hl.main(["--metrics", metrics, "--check", str(readme)]) == 1
    assert "the headline block differs" in capsys.readouterr().err
    assert hl.main(["--metrics", metrics, "--readme", str(readme)]) == 0
    assert readme.read_text() == (ROOT / "README.md").read_text()


def test_a_document_without_a_block_is_one_line(tmp_path, capsys):
    doc = tmp_path / "plain.md"
    doc.write_text("# nothing generated here\n")
    assert hl.main(["--metrics", str(write_metrics(tmp_path)), "--readme", str(doc)]) == 1
    assert capsys.readouterr().err == (f"headline: {doc}: no <!-- headline:start --> … <!-- headline:end --> "
                                       "block to write\n")
    assert hl.main(["--check", str(doc)]) == 1


def test_the_machine_comes_from_the_evaluate_record_when_it_has_one():
    from tasks.report.headline import NO_MACHINE, machine_words

    assert machine_words({}) == NO_MACHINE
    assert machine_words({"machine": {"cpu": "Xeon", "cores": 2, "gpu": None}}) == "Xeon, 2 cores"
    assert machine_words({"machine": {"cpu": "Xeon", "cores": 16, "gpu": "H100"}}) == "Xeon, 16 cores, H100"


def test_machine_record_names_the_cpu_and_cores():
    import os

    from tasks.stage_common import machine_record

    m = machine_record()
    assert m["cores"] == os.cpu_count() and m["cpu"] and m["torch"]
