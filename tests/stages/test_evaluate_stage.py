"""The `evaluate` stage end to end on a tiny model: encode (LanceDB) → evaluate multi-hop (distractor
and open, OneGen + MiniLM + BM25) and entity linking → metrics JSON, predictions, ELEVANT JSONL,
report, MLflow nested run; a re-run resumes from the kept pieces."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.stages.conftest import evaluate_locally_and_on_ray


@pytest.mark.slow
def test_evaluate_stage_end_to_end(tmp_path, monkeypatch, char_tokenizer, tiny_lm, small_inputs):
    pytest.importorskip("lancedb")
    from mlflow import MlflowClient

    from onegen_core.config import EncodeConfig, load_params
    from onegen_core.method.backbone import save_checkpoint
    from tasks import encode, evaluate

    monkeypatch.chdir(tmp_path)  # runs/evaluate (the resume cache) lands in tmp
    ckpt = save_checkpoint(tiny_lm, char_tokenizer, tmp_path / "ckpt", {"tokenizer": "char"})
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "art"))
    train_run = client.create_run(exp, run_name="train").info.run_id
    (ckpt / "train_run.json").write_text(json.dumps({"mlflow_run_id": train_run, "mlflow_tracking_uri": uri}))

    s = small_inputs
    encode.run(EncodeConfig(checkpoint=str(ckpt), uri=str(tmp_path / "idx"), hotpotqa=[str(s["hot"])],
                            wiki2=[str(s["wiki"])], kb=str(s["kb"]), max_doc_length=4096,
                            report_path=str(tmp_path / "enc.json")))
    p = load_params(ROOT / "params.yaml", {
        "profile": "tiny",
        "evaluate.checkpoint": str(ckpt), "evaluate.index_uri": str(tmp_path / "idx"),
        "evaluate.hotpotqa": str(s["hot"]), "evaluate.wiki2": str(s["wiki"]), "evaluate.elevant": [str(s["el"])],
        "evaluate.max_new_tokens": 24, "evaluate.max_retrievals": 2, "evaluate.el_max_chars": 300,
        "evaluate.el_max_retrievals": 6, "evaluate.out_dir": str(tmp_path / "report"),
        "evaluate.metrics_path": str(tmp_path / "metrics" / "evaluate.json"),
        "prepare.out_dir": str(tmp_path / "prepared"), "mlflow.tracking_uri": uri,
    })
    result = evaluate.run(p)

    metrics = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    for ds, n in (("hotpotqa", 3), ("2wiki", 2)):
        for setting in ("distractor", "open"):
            systems = metrics["multihop"][ds][setting]
            assert set(systems) == {"onegen", "minilm", "bm25"}
            assert all(a["questions"] == n for a in systems.values())  # misses stay in the denominator
            rows = (tmp_path / "report" / "predictions" / f"{ds}.{setting}.onegen.jsonl").read_text().splitlines()
            assert len(rows) == n
    el = metrics["entity_linking"]
    assert el["articles"] == 2 and el["gold_mentions"] > 0
    assert sum(el["windows_by_finish_reason"].values()) == el["windows"]
    lp = el["linking_pass"]
    assert lp["forward_passes"] > 0 and lp["searches"] >= 0 and 0 <= lp["draft_tokens_kept"] <= lp["draft_tokens_fed"]
    assert f"{lp['forward_passes']:,} forward passes" in (tmp_path / "report" / "report.md").read_text()
    onegen = el["systems"]["onegen"]["all"]
    assert set(onegen) == {"md", "el", "ed"} and onegen["ed"]["tp"] + onegen["ed"]["fn"] == el["gold_mentions"]
    assert {"bm25", "minilm"} <= set(el["systems"])
    linked = (tmp_path / "report" / "elevant" / "onegen.spotlight.linked_articles.jsonl").read_text().splitlines()
    assert len(linked) == 2
    for line in linked:
        art = json.loads(line)
        assert {"id", "text", "labels", "entity_mentions"} <= set(art)
        for m in art["entity_mentions"]:
            assert 0 <= m["span"][0] < m["span"][1] <= len(art["text"]) and m["recognized_by"] == "onegen"
    # the gold-mention ED predictions are exported too, and each export has the .metadata.json that
    # ELEVANT's own linking script writes beside it
    ed = (tmp_path / "report" / "elevant" / "onegen-ed.spotlight.linked_articles.jsonl").read_text().splitlines()
    assert len(ed) == 2
    gold_spans = {tuple(lb["span"]) for line in ed for lb in json.loads(line)["labels"]}
    ed_spans = {tuple(m["span"]) for line in ed for m in json.loads(line).get("entity_mentions", [])}
    assert ed_spans and ed_spans <= gold_spans  # ED links the gold mentions only
    for experiment in ("onegen", "onegen-ed"):
        meta = json.loads((tmp_path / "report" / "elevant" / f"{experiment}.spotlight.metadata.json").read_text())
        assert meta["experiment_name"] == experiment and meta["linker_name"] == "onegen"
        assert {"experiment_description", "timestamp", "linking_time"} <= set(meta)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| hotpotqa | distractor | onegen | 3 |" in report and (tmp_path / "report" / "multihop.png").is_file()

    ev = client.get_run(result["mlflow"]["run_id"])
    assert ev.data.tags["mlflow.parentRunId"] == train_run and ev.info.status == "FINISHED"
    assert "eval/hotpotqa/distractor/onegen/em" in ev.data.metrics and "eval/el/onegen/el_f1" in ev.data.metrics
    assert "eval/2wiki/open/bm25/recall_at_1_question" in client.get_run(train_run).data.metrics
    artifacts = {a.path for a in client.list_artifacts(ev.info.run_id, "evaluate")}
    assert "evaluate/report.md" in artifacts

    again = evaluate.run(p)  # every piece is kept: nothing is generated twice, same numbers
    assert again["multihop"] == result["multihop"] and again["entity_linking"] == result["entity_linking"]


def test_evaluate_refuses_a_trained_benchmark(tmp_path, small_inputs):
    """The stage links `evaluate.elevant` against the prepare stage's split (`prepare.out_dir`/el_split.json)."""
    from onegen_core.config import load_params
    from onegen_core.evaluation.linking import held_out_articles

    prep = tmp_path / "prepared"
    prep.mkdir()
    (prep / "el_split.json").write_text(json.dumps({"benchmarks": {"train": ["spotlight"], "eval": []}}))
    p = load_params(ROOT / "params.yaml", {"profile": "tiny", "evaluate.elevant": [str(small_inputs["el"])],
                                           "prepare.out_dir": str(prep)})
    cfg = p.evaluate
    with pytest.raises(ValueError, match="training benchmark"):
        held_out_articles(cfg.elevant, cfg.el_benchmarks, cfg.max_articles, Path(p.prepare.out_dir) / "el_split.json")


@pytest.mark.slow
def test_evaluate_on_ray_gives_the_local_metrics(tmp_path, monkeypatch, char_tokenizer, tiny_lm, small_inputs):
    """`evaluate.executor: ray` (replicas on a local Ray, two actors, several jobs each) gives exactly the local
    run's predictions and metrics: greedy decoding of the same batches."""
    evaluate_locally_and_on_ray(tmp_path, monkeypatch, char_tokenizer, tiny_lm, small_inputs,
                                {"ray_data.actors_min": 2, "ray_data.actors_max": 2})


@pytest.mark.slow
def test_link_threshold_stage_chooses_on_the_label_stages_validation_windows(tmp_path, monkeypatch, char_tokenizer,
                                                                             tiny_lm, small_inputs):
    """The stage rebuilds the held-back entity-linking windows from their training articles as the label
    stage cut them, links them with the checkpoint, and writes the validation-optimal NIL threshold for
    that checkpoint; a validation file without such windows gives a record that says so (no threshold)."""
    pytest.importorskip("lancedb")
    from onegen_core.config import EncodeConfig, load_params
    from onegen_core.data import load_elevant
    from onegen_core.method.backbone import checkpoint_id, save_checkpoint
    from onegen_core.prepare.labelling import text_windows
    from tasks import encode, link_threshold

    monkeypatch.chdir(tmp_path)
    s = small_inputs
    ckpt = save_checkpoint(tiny_lm, char_tokenizer, tmp_path / "ckpt", {"tokenizer": "char"})
    encode.run(EncodeConfig(checkpoint=str(ckpt), uri=str(tmp_path / "idx"), hotpotqa=[str(s["hot"])], kb=str(s["kb"]),
                            max_doc_length=4096, report_path=str(tmp_path / "enc.json")))
    prepared, label = tmp_path / "prepared", tmp_path / "label"
    prepared.mkdir()
    label.mkdir()
    (prepared / "kb.jsonl").write_text(s["kb"].read_text())
    arts = load_elevant(s["el"])
    (prepared / "el_split.json").write_text(json.dumps({"benchmarks": {"train": [arts[0].benchmark], "eval": []}}))
    # one held-back window per article: the first, as the label stage cuts it (around linkable mentions)
    val = [{"id": f"{a.key}@{text_windows(a.text, [lb.span for lb in a.top_level_labels()], 300)[0][0]}",
            "task": "entity_linking"} for a in arts]
    (label / "val.jsonl").write_text("".join(json.dumps(v) + "\n" for v in val))
    out = tmp_path / "metrics" / "link_threshold.json"
    p = load_params(ROOT / "params.yaml", {
        "profile": "tiny", "evaluate.checkpoint": str(ckpt), "evaluate.index_uri": str(tmp_path / "idx"),
        "evaluate.el_max_retrievals": 6, "label.el_max_chars": 300, "label.out_dir": str(label),
        "prepare.out_dir": str(prepared), "prepare.elevant": [str(s["el"])], "serve.link_threshold_path": str(out)})
    report = link_threshold.run(p)
    saved = json.loads(out.read_text())
    assert saved["checkpoint_id"] == checkpoint_id(ckpt) == report["checkpoint_id"]
    assert saved["windows"] == len(arts) and sum(saved["finish"].values()) == len(arts)
    assert saved["f1"] >= saved["f1_without"] and saved["linked"] >= saved["abstained"] >= 0
    assert saved["threshold"] is None or saved["threshold"] in [c["threshold"] for c in saved["curve"]]
    # no entity-linking validation example (linking left out): a record that says so, and nothing to abstain with
    (label / "val.jsonl").write_text(json.dumps({"id": "x", "task": "multihop"}) + "\n")
    none = link_threshold.run(p)
    assert none["threshold"] is None and none["windows"] == 0 and "no entity-linking example" in none["reason"]
    from onegen_core.evaluation.nil_threshold import read_threshold

    t, why = read_threshold(out, checkpoint_id(ckpt))
    assert t is None and "no entity-linking example" in why and str(out) in why
