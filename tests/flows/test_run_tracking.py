"""flows/run_tracking.py: the flow's MLflow run and the headline figures read from the metrics files."""
from __future__ import annotations

import json
from types import SimpleNamespace


def test_metric_key_and_numeric_leaves():
    from flows.run_tracking import metric_key, numeric_leaves

    assert metric_key("eval/hotpot qa:em@1") == "eval/hotpot qa_em_1"
    assert len(metric_key("x" * 300)) == 250
    assert numeric_leaves({"a": 1, "b": {"c": 2.5, "d": True, "e": float("nan"), "f": "x"}, "g": [1]}) == {
        "a": 1.0, "b/c": 2.5}


def test_read_json_is_none_for_missing_bad_or_non_object_files(tmp_path):
    from flows.run_tracking import read_json

    (tmp_path / "ok.json").write_text('{"a": 1}')
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "bad.json").write_text("{")
    assert read_json(tmp_path / "ok.json") == {"a": 1}
    assert [read_json(tmp_path / n) for n in ("list.json", "bad.json", "none.json")] == [None, None, None]


def test_headline_metrics_from_the_metrics_files(tmp_path):
    from flows.run_tracking import headline_metrics

    (tmp_path / "train.json").write_text(json.dumps({"steps": 2, "lm_loss_last": 1.5, "seconds": float("inf"),
                                                     "other": 9, "val_after": {"recall_at_1": 0.5}}))
    (tmp_path / "encode.json").write_text(json.dumps({"documents": 4, "units_truncated": False, "skip": 1}))
    (tmp_path / "evaluate.json").write_text(json.dumps({"hotpotqa": {"em": 0.25}}))
    p = SimpleNamespace(train_data=SimpleNamespace(metrics_path="train.json"),
                        encode=SimpleNamespace(report_path="encode.json"),
                        evaluate=SimpleNamespace(metrics_path="evaluate.json"))
    assert headline_metrics(tmp_path, p) == {"train/steps": 2.0, "train/lm_loss_last": 1.5,
                                             "train/val_recall_at_1": 0.5, "encode/documents": 4.0,
                                             "evaluate/hotpotqa/em": 0.25}
    p.evaluate = None  # no evaluate section: its default path, absent here
    assert "evaluate/hotpotqa/em" not in headline_metrics(tmp_path, p)


def test_open_run_creates_a_tagged_run_with_its_params(tmp_path):
    from flows.run_tracking import open_run

    p = SimpleNamespace(mlflow=SimpleNamespace(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="exp",
                                               artifact_location=str(tmp_path / "art")))
    run = open_run(tmp_path, p, "flow-1", {"onegen.kind": "test", "long": "x" * 6000}, {"stages": ["train"]})
    got = run.client.get_run(run.run_id)
    assert got.info.run_name == "flow-1" and got.info.experiment_id == run.experiment_id
    assert got.data.tags["onegen.kind"] == "test" and len(got.data.tags["long"]) == 5000
    assert got.data.params == {"stages": '["train"]'}
    assert run.location().startswith(f"run {run.run_id} in {run.tracking_uri}")
