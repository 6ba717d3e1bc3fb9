"""flows/dvc_stages.py: the stages dvc.yaml defines, one line of what `dvc status` found, the stages'
environment."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def test_defined_stages_keep_dvc_yaml_order(tmp_path):
    from flows.dvc_stages import defined_stages

    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: 'true'\n  prepare:\n    cmd: 'true'\n")
    assert defined_stages(tmp_path) == ["train", "prepare"]
    (tmp_path / "dvc.yaml").write_text("")
    assert defined_stages(tmp_path) == []


def test_describe_status_is_one_line_per_stage():
    from flows.dvc_stages import describe_status

    status = {"train": [{"changed deps": {"params.yaml": {"loss.lambda_r": "modified"}, "tasks/train.py": "modified"}},
                        "always changed"],
              "encode": {"changed outs": "not in cache"}}
    assert describe_status(status) == ("train: changed deps params.yaml (loss.lambda_r: modified); tasks/train.py "
                                       "modified, always changed | encode: changed outs not in cache")
    assert describe_status(status, limit=20) == "train: changed de..."


def test_stage_env_puts_this_python_and_the_project_first(monkeypatch, tmp_path):
    from flows.dvc_stages import stage_env

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    env = stage_env(tmp_path, {"EXTRA": "1"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["PYTHONPATH"] == os.pathsep.join([str(tmp_path), "/elsewhere"])
    assert (env["HF_HUB_OFFLINE"], env["PYTHONUNBUFFERED"], env["EXTRA"]) == ("1", "1", "1")
