"""One rank's hooks into the core training loop (`tasks.adapters.ray_worker.WorkerRun`) and the settings
the driver hands it, with a stand-in DeepSpeed engine: no Ray session, no process group."""
from __future__ import annotations

import json
import math
import pickle
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


class FakeEngine:
    """The DeepSpeed engine calls the hooks make: backward, step, the accumulation boundary, the norm."""

    def __init__(self, stage: int = 3, norm: float | None = 2.0):
        self.module = torch.nn.Linear(2, 1, bias=False)
        self.stage, self.norm = stage, norm
        self.calls: list[tuple] = []

    def backward(self, loss, scale_wrt_gas=True):
        self.calls.append(("backward", float(loss.detach()), scale_wrt_gas))
        loss.backward()

    def is_gradient_accumulation_boundary(self):
        return True

    def zero_optimization_stage(self):
        return self.stage

    def step(self):
        self.calls.append(("step",))

    def get_global_grad_norm(self):
        return self.norm


def settings(tmp_path, **over):
    from onegen_core.config import load_params
    from tasks.adapters.worker_settings import WorkerSettings

    p = load_params(ROOT / "params.yaml", {"train_data.eval_every": 3, "distributed.checkpoint_every": 2,
                                           "train.log_every": 100, **over})
    return WorkerSettings(params=p, run_name="onegen-x", init_dir="init", train_file="t.jsonl", val_file="v.jsonl",
                          ds_config={"zero_optimization": {"stage": 3}}, tracking_uri="sqlite:///m.db",
                          mlflow_run_id="rid", history_path=str(tmp_path / "history.jsonl"),
                          fail_marker=str(tmp_path / "failed-once"))


def worker_run(tmp_path, engine, rank=0, world=2, total=4, **over):
    from tasks.adapters.ray_worker import WorkerRun
    from tasks.adapters.train_checkpoint import TrainedModel

    model = TrainedModel(engine, engine.module, tokenizer=None, special=[], zero3=True)
    return WorkerRun(settings(tmp_path, **over), rank, world, total, model,
                     train_examples=[], val_examples=[], collator=None, eval_collator=None)


def metrics(step: int, **stats) -> object:
    from onegen_core.training.loop import StepMetrics

    return StepMetrics(step=step, epoch=0, loss=1.5, lm_loss=1.0, retrieval_loss=0.5, pair_accuracy=0.75, lr=1e-3,
                       tokens=10, tokens_per_s=20.0, grad_norm=2.0, stats=Counter(stats))


def test_settings_cross_to_a_worker_as_one_typed_record(tmp_path):
    import dataclasses

    import cloudpickle

    from tasks.adapters.worker_settings import WorkerSettings

    s = settings(tmp_path)
    config = s.to_config()
    assert list(config) == ["settings"] and WorkerSettings.from_config(config) is s
    again = WorkerSettings.from_config(pickle.loads(cloudpickle.dumps(config)))  # as Ray ships it
    assert again == s and again.params.train.lr == s.params.train.lr
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.run_name = "other"
    with pytest.raises(TypeError, match=r"train_loop_config\['settings'\] is a dict, not WorkerSettings"):
        WorkerSettings.from_config({"settings": {"run_name": "x"}})


def test_step_metrics_and_the_own_negative_share():
    from tasks.adapters.ray_worker import step_metrics

    assert step_metrics(metrics(0)) == {"loss": 1.5, "lm_loss": 1.0, "retrieval_loss": 0.5, "pair_accuracy": 0.75,
                                        "lr": 1e-3, "tokens_per_s": 20.0, "grad_norm": 2.0, "epoch": 0.0}
    assert step_metrics(metrics(0, negatives_drawn=8, negatives_own=2))["own_negative_share"] == 0.25


def test_validation_metrics_add_per_task_figures_only_for_several_tasks():
    from tasks.adapters.ray_worker import VAL_TASK_KEYS, validation_metrics

    one = {"recall_at_1": 0.5, "queries": 4, "multihop/recall_at_1": 0.5}
    assert validation_metrics(one, ["multihop"]) == {"val/recall_at_1": 0.5, "val/queries": 4}
    two = {"recall_at_1": 0.5, **{f"{t}/{k}": 1.0 for t in ("a", "b") for k in VAL_TASK_KEYS}}
    out = validation_metrics(two, ["a", "b"])
    assert out["val/recall_at_1"] == 0.5 and len(out) == 1 + 2 * len(VAL_TASK_KEYS) and out["val/b/queries"] == 1.0


def test_backward_scales_the_loss_by_the_world_size_and_steps_the_engine(tmp_path):
    run = worker_run(tmp_path, FakeEngine(stage=3), world=4)
    w = run.model.engine.module.weight
    run.backward((w.sum() * 0 + 0.25))
    assert run.model.engine.calls == [("backward", 1.0, False), ("step",)]
    assert run.read_norm(0, 1e-3) == 2.0  # DeepSpeed's own norm
    assert math.isnan(run.own_norm)  # not measured under ZeRO-3


def test_under_zero0_the_norm_is_read_from_the_whole_gradients(tmp_path):
    engine = FakeEngine(stage=0, norm=None)
    run = worker_run(tmp_path, engine, world=2)
    with torch.no_grad():
        engine.module.weight.copy_(torch.tensor([[3.0, 4.0]]))
    x = torch.tensor([[1.0, 0.0]])
    run.backward(engine.module(x).sum())  # d/dw of (w . x) * 2 ranks = [2, 0]
    assert torch.equal(engine.module.weight.grad, torch.tensor([[2.0, 0.0]]))
    assert run.read_norm(0, 1e-3) == 2.0


def test_on_step_validates_logs_and_checkpoints_on_schedule(tmp_path, monkeypatch):
    """eval_every=3, checkpoint_every=2, 4 steps: validation after steps 3 and 4 (the last), checkpoints
    after 2 and 4, a plain report after 1 and 3; rank 0 logs every step to MLflow and the history."""
    import ray.train

    reports, checkpoints, logged = [], [], []
    monkeypatch.setattr(ray.train, "report", lambda m, **kw: reports.append(m["step"]))
    run = worker_run(tmp_path, FakeEngine())
    monkeypatch.setattr(run, "validate", lambda: {"val/recall_at_1": 0.5})
    monkeypatch.setattr(run, "report_checkpoint", lambda step, m: checkpoints.append((step, "val/recall_at_1" in m)))
    run.tracker = type("Tracker", (), {"log": lambda self, m, step: logged.append(step)})()
    run.history = Path(run.settings.history_path)
    for s in range(4):
        run.on_step(metrics(s))
    assert reports == [1, 3] and checkpoints == [(2, False), (4, True)] and logged == [1, 2, 3, 4]
    rows = [json.loads(line) for line in run.history.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert ["val/recall_at_1" in r for r in rows] == [False, False, True, True]
    assert rows[0]["loss"] == 1.5 and rows[0]["epoch"] == 0.0


def test_fail_at_step_kills_the_last_rank_once_after_its_checkpoint(tmp_path, monkeypatch):
    from tasks.adapters import ray_worker

    crashed = []
    monkeypatch.setattr(ray_worker, "_crash_once", lambda marker, step: crashed.append((marker.name, step)))
    for rank in (0, 1):
        run = worker_run(tmp_path, FakeEngine(), rank=rank, world=2, **{"distributed.fail_at_step": 2})
        monkeypatch.setattr(run, "report_checkpoint", lambda step, m: None)
        run.on_step(metrics(1))
    assert crashed == [("failed-once", 2)]
