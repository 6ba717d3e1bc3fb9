"""The distributed `train` stage: Ray Train TorchTrainer, 2 CPU workers over gloo, DeepSpeed ZeRO-3.

One local Ray session serves the module (a worker group costs ~20 s to start). The data are 24
HotpotQA training questions reconstructed in the test; the model is a 2-layer 64-d tiny Qwen2.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.stages.conftest import params_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "onegen" / "torch_extensions"))
    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
                                       "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"],
                                       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def history(summary: dict) -> dict[int, dict]:
    from tasks.adapters.train_summary import read_history

    path = Path(summary["ray_checkpoint"]).parent / "history.jsonl"
    return {r["step"]: r for r in read_history(path)}


@pytest.fixture(scope="module")
def uninterrupted(ray_session, data_dir, tmp_path_factory):
    from tasks.train import run

    work = tmp_path_factory.mktemp("run_a")
    p = params_for(data_dir, work)
    return p, work, run(p)


def test_zero3_run_writes_a_loadable_checkpoint_and_an_mlflow_run(uninterrupted):
    from mlflow import MlflowClient

    from onegen_core.method.backbone import load_pretrained

    p, work, s = uninterrupted
    assert s["steps"] == 4 and s["workers"] == 2
    model, tok, ids = load_pretrained(s["checkpoint"])
    assert tok.convert_tokens_to_ids("[RQ]") == ids.rq
    assert json.loads((work / "train.json").read_text())["mlflow_run_id"] == s["mlflow_run_id"]

    from tasks.adapters.tracking import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri(s["mlflow_tracking_uri"]))
    run = client.get_run(s["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    for key in ("loss", "lm_loss", "retrieval_loss", "lr", "tokens_per_s", "val/recall_at_1"):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
    assert run.data.params["loss.lambda_r"] == str(p.loss.lambda_r)
    assert len(run.data.tags["git.commit"]) in (40, 7) or run.data.tags["git.commit"] == "unknown"
    (mv,) = client.search_model_versions(f"name='{p.mlflow.registered_model}'")
    assert mv.run_id == run.info.run_id
    assert any(a.path == "checkpoint" for a in client.list_artifacts(run.info.run_id))


def test_zero3_losses_equal_the_single_process_loop_on_the_same_global_batch(uninterrupted, data_dir):
    """Step 1 (same weights) and step 2 (after one ZeRO-3 optimizer step) of 2 workers x 2 examples
    equal one process running the same 4 examples as 2 micro-batches of 2.

    Like with like: the retrieval loss shares negatives within a micro-batch and samples pairs per
    micro-batch, so it is not invariant to how a global batch is split. Both runs split it into the
    same micro-batches (rank r runs global micro-batch r; the single process runs them in order,
    `grad_accum = 2`) and seed each micro-batch's pair sampling by (seed, step, global micro index).
    Token losses are normalised by the step's global GEN-token count in both.
    """
    import dataclasses

    from onegen_core.method.backbone import load_pretrained
    from onegen_core.method.collator import OneGenCollator
    from onegen_core.method.model import OneGenModel
    from onegen_core.training.dataset import load_examples
    from onegen_core.training.loop import train

    p, _, s = uninterrupted
    dist_hist = history(s)
    lm, tok, _ = load_pretrained(p.train_data.init_dir)
    model = OneGenModel(lm, p.loss)
    col = OneGenCollator(tok, p.train.max_length, p.train.max_doc_length, p.loss.share_negatives)
    examples = load_examples(p.train_data.train_file, p.train_data.tasks)
    cfg = dataclasses.replace(p.train, grad_accum=2)  # same global batch: 2 micro-batches of 2
    single = train(model, col, examples, cfg)
    assert math.isclose(single[0].loss, dist_hist[1]["loss"], rel_tol=1e-5)
    assert math.isclose(single[0].lm_loss, dist_hist[1]["lm_loss"], rel_tol=1e-5)
    assert math.isclose(single[0].retrieval_loss, dist_hist[1]["retrieval_loss"], rel_tol=1e-5)
    # after one step: the ZeRO-3 update (gradients averaged over ranks, clipped, AdamW) matches too
    assert math.isclose(single[1].loss, dist_hist[2]["loss"], rel_tol=1e-4)
    assert math.isclose(single[0].grad_norm, dist_hist[1]["grad_norm"], rel_tol=1e-4)


def test_killed_worker_resumes_step_for_step(uninterrupted, data_dir, tmp_path_factory):
    """Rank 1 is SIGKILLed right after the step-2 checkpoint; Ray restarts the group
    (FailureConfig), the workers restore DeepSpeed state, RNG and step, and steps 3-4 reproduce the
    uninterrupted run's losses and learning rates."""
    from tasks.train import run

    _, _, a = uninterrupted
    work = tmp_path_factory.mktemp("run_killed")
    p = params_for(data_dir, work, **{"distributed.fail_at_step": 2, "distributed.max_failures": 1})
    b = run(p)
    assert (Path(b["ray_checkpoint"]).parent / "failed-once").read_text() == "2"
    ha, hb = history(a), history(b)
    assert sorted(hb) == sorted(ha) == [0, 1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        for key in ("loss", "lm_loss", "retrieval_loss", "lr"):
            assert math.isclose(ha[step][key], hb[step][key], rel_tol=1e-6, abs_tol=1e-9), (step, key)


def test_resume_from_a_chosen_checkpoint(uninterrupted, data_dir, tmp_path_factory):
    from tasks.train import run

    _, _, a = uninterrupted
    ckpts = sorted(c for c in Path(a["ray_checkpoint"]).parent.glob("checkpoint_*") if c.is_dir())
    step2 = [c for c in ckpts if json.loads((c / "state.json").read_text())["step"] == 2]
    assert len(step2) == 1
    work = tmp_path_factory.mktemp("run_chosen")
    c = run(params_for(data_dir, work, **{"distributed.resume_from": str(step2[0]), "distributed.trust_resume": True}))
    ha, hc = history(a), history(c)
    assert sorted(hc) == [3, 4]  # nothing before the chosen checkpoint is re-run
    for step in (3, 4):
        assert math.isclose(ha[step]["loss"], hc[step]["loss"], rel_tol=1e-6), step


def test_deepspeed_configs_validate_with_deepspeeds_parser():
    from onegen_core.config import load_params
    from tasks.adapters.deepspeed_config import load_ds_config, resolved_ds_config, validate

    for f in sorted((ROOT / "infra" / "deepspeed").glob("*.json")):
        p = load_params(ROOT / "params.yaml", {"distributed.deepspeed_config": str(f)})
        cfg = resolved_ds_config(p, 2, 256)
        parsed = validate(cfg, 2)
        assert parsed.zero_optimization_stage == load_ds_config(f)["zero_optimization"]["stage"]
        assert "auto" not in json.dumps(cfg)
    bad = resolved_ds_config(load_params(ROOT / "params.yaml"), 2, 256)
    bad["zero_optimization"]["stage3_no_such_key"] = 1
    with pytest.raises(Exception, match="stage3_no_such_key"):
        validate(bad, 2)
    with pytest.raises(ValueError, match="train_batch_size"):
        validate({**resolved_ds_config(load_params(ROOT / "params.yaml"), 2, 256), "train_batch_size": 3}, 2)


def test_one_rank_skips_deepspeeds_shm_comm_op_build_and_two_ranks_keep_it(monkeypatch):
    """DeepSpeed JIT-builds its shared-memory all-reduce op (~30 s cold) on a CPU accelerator whatever the
    world size; one rank has nothing to reduce, so the build is skipped there, and only there."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from deepspeed.comm.torch import build_shm_op

    from tasks.adapters.ray_worker import skip_shm_comm_op

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None:
        pytest.skip("this accelerator has no shared-memory comm op")
    table = dict(deepspeed.ops.__compatible_ops__)   # the test's own copy: the process's table is untouched
    monkeypatch.setattr(deepspeed.ops, "__compatible_ops__", table)
    before = dict(table)
    assert skip_shm_comm_op(2) is False and table == before
    assert skip_shm_comm_op(1) is True
    assert table[builder.NAME] is False
    assert build_shm_op() is None          # DeepSpeed's own check: no build, collectives via torch.distributed


def test_rerunning_a_finished_run_resumes_it_instead_of_training_again(uninterrupted):
    """Same settings → same Ray run name → Ray restores the run's latest checkpoint (how an
    interrupted `dvc repro train` continues); a finished run has nothing left to do."""
    from tasks.train import run

    p, _, a = uninterrupted
    before = history(a)
    again = run(p)
    assert again["ray_run"] == a["ray_run"] and again["mlflow_run_id"] == a["mlflow_run_id"]
    assert history(again) == before
    assert again["ray_checkpoint"] == a["ray_checkpoint"]


def test_lora_under_zero3_trains_adapters_and_saves_merged_weights(ray_session, data_dir, tmp_path_factory):
    """LoRA is one setting: the same ZeRO-3 run trains adapters and the OneGen token rows only, and
    the published checkpoint is a plain model with the adapters merged in."""
    import torch
    from safetensors.torch import load_file

    from tasks.train import run

    work = tmp_path_factory.mktemp("run_lora")
    p = params_for(data_dir, work, **{"lora.enabled": True, "lora.r": 4, "train.max_steps": 2})
    s = run(p)
    init = load_file(str(Path(p.train_data.init_dir) / "model.safetensors"))
    out = load_file(str(Path(s["checkpoint"]) / "model.safetensors"))
    assert set(out) == set(init)  # no adapter keys left: merged
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(out[q], init[q])  # the adapter's update is folded in
    emb = "model.embed_tokens.weight"
    changed = (out[emb] - init[emb]).abs().sum(1).nonzero().flatten().tolist()
    from onegen_core.method.backbone import read_meta
    special = set(read_meta(p.train_data.init_dir)["special_tokens"].values())
    assert changed and set(changed) <= special  # only OneGen token rows of the embedding moved
