"""flows/lambda_sweep.py's steps, each without running a point: the plan's checks, the experiment names,
params.yaml put back, the comparison table and the best point."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("test.sweep")


def _project(tmp: Path) -> Path:
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp / name)
    shutil.copytree(ROOT / "profiles", tmp / "profiles")
    return tmp


def test_experiment_names_are_git_ref_safe():
    from flows.lambda_sweep import exp_name

    assert [exp_name("sweep-1", lam) for lam in (0.0, 0.5, 4.0, -1e-05)] == [
        "sweep-1-lr0", "sweep-1-lr0p5", "sweep-1-lr4", "sweep-1-lrm1em05"]


@pytest.mark.parametrize("lambda_r,overrides,message", [
    ([], None, "lambda_r: give at least one value"),
    ([1.0, 1.0], None, r"lambda_r: repeated values in \[1.0, 1.0\]"),
    ([1.0], None, "DVC experiments need a git repository"),  # the copy is no git repository
])
def test_plan_refuses_a_bad_sweep_before_anything_runs(tmp_path, lambda_r, overrides, message):
    from flows.lambda_sweep import plan_sweep
    from flows.project import FlowError

    root = _project(tmp_path)
    with pytest.raises(FlowError, match=message):
        plan_sweep(lambda_r, None, None, overrides, None, None, str(root), "train", None)


def test_params_yaml_is_put_back_however_the_block_ends(tmp_path):
    from flows.lambda_sweep import params_restored

    params = tmp_path / "params.yaml"
    params.write_text("loss:\n  lambda_r: 1.0\n")
    with pytest.raises(RuntimeError):
        with params_restored(tmp_path, "sweep-x", log):
            params.write_text("loss:\n  lambda_r: 4.0\n")
            raise RuntimeError("a point died")
    assert params.read_text() == "loss:\n  lambda_r: 1.0\n"
    assert (tmp_path / ".dvc/tmp/onegen/params.yaml.before-sweep-x").read_text() == params.read_text()


def test_best_point_is_the_lowest_loss_or_the_highest_score_of_the_first_metric_present():
    from flows.lambda_sweep import best_point

    rows = [{"lambda_r": 0.0, "status": "ok", "val/recall_at_1": 0.2, "lm_loss_last": 2.0},
            {"lambda_r": 1.0, "status": "ok", "val/recall_at_1": 0.6, "lm_loss_last": 3.0},
            {"lambda_r": 4.0, "status": "failed", "val/recall_at_1": 0.9}]
    assert best_point(rows, ["eval/em", "val/recall_at_1", "lm_loss_last"]) == ("val/recall_at_1", 1.0, 0.6)
    assert best_point(rows, ["lm_loss_last"]) == ("lm_loss_last", 0.0, 2.0)
    assert best_point(rows, ["eval/em"]) is None


def test_the_table_sorts_by_lambda_r_and_the_markdown_shows_the_compared_metrics(tmp_path):
    from flows.lambda_sweep import write_table

    rows = [{"lambda_r": 4.0, "status": "failed", "exp": "s-lr4", "error": "a|b"},
            {"lambda_r": 0.0, "status": "ok", "exp": "s-lr0", "val/recall_at_1": 0.25, "steps": 2,
             "mlflow_run_id": "r0"}]
    cols = write_table(rows, tmp_path, ("val/recall_at_1", "eval/em"))
    assert cols == ["lambda_r", "status", "val/recall_at_1", "steps", "exp", "mlflow_run_id", "error"]
    assert (tmp_path / "sweep.csv").read_text().splitlines()[1:] == ["0.0,ok,0.25,2,s-lr0,r0,", "4.0,failed,,,s-lr4,,a|b"]
    assert (tmp_path / "sweep.md").read_text() == (
        "| lambda_r | status | val/recall_at_1 | mlflow_run_id | error |\n|---|---|---|---|---|\n"
        "| 0 | ok | 0.25 | r0 |  |\n| 4 | failed |  |  | a/b |\n")
