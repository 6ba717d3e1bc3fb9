"""The OneGen training loop on one Ray Train worker, under DeepSpeed (ZeRO-3 by default).

Every rank runs this function. It runs the core's one training loop (`onegen_core.training.loop.run_steps`)
and passes in what differs under DeepSpeed:
- DeepSpeed owns the optimizer step, gradient averaging, clipping and the sharded state;
- losses are normalised by *global* counts (GEN tokens and micro-batches of the whole step, summed
  over ranks), so the summed loss and the gradient equal those of one process on the same batch;
- every rank makes the same module calls per micro-batch (`OneGenModel.agree_calls`), because
  ZeRO-3 gathers each layer's weights with a collective on every call;
- checkpoints hold DeepSpeed's sharded state (optimizer, scheduler, weights), each rank's RNG and
  a Hugging Face copy of the full weights; they are reported through `ray.train.report`, so Ray
  restores the latest after a crash (`FailureConfig`) or a re-run of the same run;
- rank 0 alone logs to MLflow and writes the step history.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("onegen.train_worker")

STATE_FILE = "state.json"
HF_DIR = "hf"
DS_DIR = "deepspeed"


class UntrustedResume(PermissionError):
    """`distributed.resume_from` names a directory outside the run's storage path, without
    `distributed.trust_resume`."""


def check_resume_trust(resume_dir: str, storage_path: str, trusted: bool) -> None:
    """The trust boundary of a resume: DeepSpeed's `load_checkpoint` unpickles the optimizer and
    scheduler state it finds (`torch.load(weights_only=False)`), so a file there can run code. A
    checkpoint under `distributed.storage_path` was written by this project's runs; anything else is
    refused unless `distributed.trust_resume` says the user trusts it, and then the log says so."""
    if not resume_dir:
        return
    inside = False
    if "://" not in storage_path:
        inside = Path(resume_dir).resolve().is_relative_to(Path(storage_path).resolve())
    if inside:
        return
    if not trusted:
        raise UntrustedResume(
            f"distributed.resume_from={resume_dir} is outside distributed.storage_path={storage_path}: resuming "
            "unpickles the optimizer state found there (code can run). Move the checkpoint under the storage "
            "path, or set distributed.trust_resume=true if you trust its source")
    log.warning("distributed.trust_resume: resuming from %s, outside distributed.storage_path=%s; its pickled "
                "optimizer state is trusted", resume_dir, storage_path)


def skip_shm_comm_op(world_size: int) -> bool:
    """With one rank, keep DeepSpeed from building its shared-memory all-reduce op; True if the build
    is now skipped.

    On a CPU accelerator DeepSpeed's communication backend JIT-compiles that C++ op (`ShareMemCommBuilder`)
    whenever it starts, whatever the world size: ~30 s of a fresh 2-core machine's `make run`, for an op
    that has nothing to reduce with one process. Marking it incompatible in DeepSpeed's op table is what
    DeepSpeed itself does on a machine that cannot build it (`build_shm_op` then returns None and every
    collective goes through torch.distributed). With 2+ ranks it is built as usual: it speeds up CPU
    all-reduce between ranks on one node. Accelerators without the builder (CUDA) are left alone.
    """
    if world_size != 1:
        return False
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None:
        return False
    deepspeed.ops.__compatible_ops__[builder.NAME] = False
    return True


def worker_loop(config: dict[str, Any]) -> None:
    import deepspeed
    import ray.train
    import torch.distributed as dist

    from onegen_core.config import Params, from_dict
    from onegen_core.evaluation.retrieval import retrieval_recall
    from onegen_core.method.collator import OneGenCollator
    from onegen_core.method.model import OneGenModel
    from onegen_core.method.precision import autocast_dtype
    from onegen_core.training.dataset import load_examples, validation_examples
    from onegen_core.training.loop import (
        StepMetrics,
        StepOps,
        compute_precision,
        make_optimizer,
        run_steps,
        step_budget,
    )
    from onegen_core.training.schedule import lr_at
    from tasks.deepspeed_config import zero_stage

    # INFO for our own loggers only: with the root at INFO, Ray Train v2 logs every `ray.train.report`
    # call ("Reporting training result N: TrainingReport(...)"), one line per step of the run
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # basicConfig leaves the level alone when Ray has already given the root a handler (it has, in a
    # worker), and Ray Train's context logs through a logger named by its file path, under the root
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("onegen", "onegen_core", "tasks"):
        logging.getLogger(name).setLevel(logging.INFO)
    p: Params = from_dict(Params, config["params"])
    torch.set_num_threads(p.distributed.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    t_cfg = p.train

    train_ex = load_examples(config["train_file"], p.train_data.tasks, p.train_data.caps())
    val_ex = validation_examples(dataclasses.replace(p.train_data, val_file=config["val_file"]))
    total, warmup = step_budget(len(train_ex), t_cfg, world)

    torch.manual_seed(t_cfg.seed)
    lm, tokenizer, special = build_lm(config, p)
    model = OneGenModel(lm, p.loss)
    collator = OneGenCollator(tokenizer, t_cfg.max_length, t_cfg.max_doc_length, p.loss.share_negatives)
    eval_collator = OneGenCollator(tokenizer, t_cfg.max_length, t_cfg.max_doc_length, share_negatives=False)
    if t_cfg.trainable_layers:
        model.train_top_layers(t_cfg.trainable_layers, autocast_dtype(t_cfg.autocast))
        if model.lower_cache is not None and world > 1:
            # ZeRO-3 needs the same module calls on every rank: fill the cache for every sequence any
            # rank will see, before the weights are partitioned, then refuse misses
            fill_lower_cache(model, [*train_ex, *val_ex], eval_collator, t_cfg, rank)
    if t_cfg.compile:
        from onegen_core.training.compiled import compile_top_layers

        log.info("rank %d: %d decoder layers run through torch.compile", rank,
                 compile_top_layers(lm, t_cfg.trainable_layers))

    if p.lora.enabled and zero_stage(config["ds_config"]) == 3:
        _register_token_adapter_weights(lm)
    optimizer = make_optimizer(model, t_cfg)
    # the lr of step s is lr_at(s): DeepSpeed steps this scheduler once per optimizer step
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, total, t_cfg.lr, warmup, t_cfg.min_lr_ratio, t_cfg.schedule) / t_cfg.lr
    )
    skip_shm_comm_op(world)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=config["ds_config"])
    zero3 = engine.zero_optimization_partition_weights()
    if world > 1:
        model.agree_calls = _all_reduce_max

    step = 0
    restored = ray.train.get_checkpoint()
    if restored is None and config.get("resume_dir"):
        # a checkpoint chosen on request: the driver checked it, and so does every rank that unpickles it
        check_resume_trust(config["resume_dir"], p.distributed.storage_path, p.distributed.trust_resume)
        restored = ray.train.Checkpoint(config["resume_dir"])
    if restored is not None:
        with restored.as_directory() as d:
            step = load_state(engine, Path(d), rank)
        log.info("rank %d resumed at step %d from %s", rank, step, restored.path)

    from tasks.tracking import StepLogger

    tracker = StepLogger(config["tracking_uri"], config["mlflow_run_id"]) if rank == 0 else None
    history = Path(config["history_path"]) if rank == 0 else None
    bar = None
    if rank == 0:
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=total, desc=f"train ({world} workers)", position=0)
        bar.update(step)

    def validate(at_step: int) -> dict[str, float]:
        # every rank runs the same examples: identical module calls, as ZeRO-3 needs
        # per task too (the tasks' queries differ in number and difficulty), from the same forward passes
        with compute_precision(t_cfg.autocast):
            r = retrieval_recall(engine.module, eval_collator, val_ex, batch_size=t_cfg.batch_size, by_task=True)
        tasks_ = sorted({e.task for e in val_ex})
        keys = ("recall_at_1", "recall_at_5", "open_recall_at_1", "open_recall_at_5", "queries")
        out = {f"val/{k}": v for k, v in r.items() if "/" not in k}
        if len(tasks_) > 1:
            out.update({f"val/{t}/{k}": r[f"{t}/{k}"] for t in tasks_ for k in keys})
        return out

    if step == 0:
        v = validate(0)
        if tracker:
            tracker.log(v, 0)
            _append(history, {"step": 0, **v})

    world_f = float(world)

    def backward(loss: torch.Tensor) -> None:
        # DeepSpeed averages gradients over ranks; each rank's loss is its share of the global loss
        # (global normalisers), so scale by the world size to get the gradient of the sum. Its engine
        # steps at the accumulation boundary, with the lr its scheduler sets.
        engine.backward(loss * world_f, scale_wrt_gas=False)
        if engine.is_gradient_accumulation_boundary() and engine.zero_optimization_stage() == 0:
            # ZeRO-0 without DeepSpeed's bf16/fp16 optimizer wrapper clips but does not record the norm
            # (get_global_grad_norm() is None); the gradients are whole on every rank, so read it here.
            grads = [q.grad for q in engine.module.parameters() if q.grad is not None]
            own_norm[0] = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))) if grads else 0.0
        engine.step()

    own_norm = [float("nan")]

    def read_norm(_: int, __: float) -> float:
        norm = engine.get_global_grad_norm()
        return float(norm) if norm is not None else own_norm[0]

    def on_step(m: StepMetrics) -> None:
        done = m.step + 1
        last = done == total
        metrics = {k: getattr(m, k) for k in ("loss", "lm_loss", "retrieval_loss", "pair_accuracy", "lr",
                                              "tokens_per_s", "grad_norm")}
        metrics["epoch"] = float(m.epoch)
        if m.stats.get("negatives_drawn"):  # this rank's step: how many negatives came from the query's own example
            metrics["own_negative_share"] = m.stats["negatives_own"] / m.stats["negatives_drawn"]
        if bar:
            bar.update(1)
        if done % p.train_data.eval_every == 0 or last:
            metrics.update(validate(done))
        if tracker:
            tracker.log(metrics, done)
            _append(history, {"step": done, **metrics})
            if done % t_cfg.log_every == 0 or last or done == 1:
                log.info("step %d/%d loss %.4f lm %.4f ret %.4f acc %.3f lr %.2e tok/s %.0f", done, total,
                         metrics["loss"], metrics["lm_loss"], metrics["retrieval_loss"], metrics["pair_accuracy"],
                         metrics["lr"], metrics["tokens_per_s"])
        if done % p.distributed.checkpoint_every == 0 or last:
            report_checkpoint(engine, lm, tokenizer, config, p, done, total, metrics, rank, zero3, special)
            if p.distributed.fail_at_step == done and rank == world - 1:
                _crash_once(Path(config["fail_marker"]), done)
        else:
            ray.train.report({"step": done, **metrics})

    ops = StepOps(backward=backward, step=read_norm, all_reduce_sum=_all_reduce_sum)
    run_steps(engine, train_ex, collator, t_cfg, ops, start_step=step, rank=rank, world_size=world, on_step=on_step)
    if bar:
        bar.close()
    dist.barrier()


def fill_lower_cache(model, examples, collator, t_cfg, rank: int) -> None:
    """Compute the frozen layers' output of every main and document sequence of `examples` (forward
    only, in their batches' padding), then freeze the cache so that a miss is an error."""
    from onegen_core.training.loop import compute_precision

    cache = model.lower_cache
    t0 = time.perf_counter()
    with compute_precision(t_cfg.autocast):
        for i in range(0, len(examples), t_cfg.batch_size):
            b = collator(list(examples[i:i + t_cfg.batch_size]))
            cache.lookup(model.lm, b.input_ids, b.attention_mask)
            cache.lookup(model.lm, b.doc_input_ids, b.doc_attention_mask)
        one = torch.zeros((1, 1), dtype=torch.long)
        cache.lookup(model.lm, one, torch.ones_like(one))  # the one-token pass `agree_calls` pads with
    cache.frozen = True
    log.info("rank %d: lower-state cache of %d sequences (%d tokens) in %.0f s", rank, len(cache), cache.tokens,
             time.perf_counter() - t0)


def build_lm(config: dict[str, Any], p):
    """The backbone every rank starts from: the run's init checkpoint (tiny: trained tokenizer +
    seeded weights) or the pretrained model, with the OneGen tokens; LoRA-wrapped on request."""
    from onegen_core.method.backbone import load_pretrained
    from onegen_core.method.lora import apply_lora
    from onegen_core.method.tokens import SPECIAL_TOKENS

    lm, tokenizer, ids = load_pretrained(config["init_dir"], p.backbone)
    special = [ids[t] for t in SPECIAL_TOKENS]
    if p.lora.enabled:
        lm = apply_lora(lm, p.lora, special)
    return lm, tokenizer, special


def _register_token_adapter_weights(lm) -> None:
    """peft's trainable-token layers read their base layer's weight and their own token deltas (held
    in a ParameterDict, a child module that is never called) inside their forward; ZeRO-3 only
    gathers a weight around its owner's forward, so tell it the wrapper uses those weights too."""
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter

    for module in lm.modules():
        if type(module).__name__ == "TrainableTokensLayer":
            register_external_parameter(module, module.base_layer.weight)
            for delta in module.trainable_tokens_delta.parameters():
                register_external_parameter(module, delta)


def report_checkpoint(engine, lm, tokenizer, config, p, step, total, metrics, rank, zero3, special) -> None:
    """Write this rank's part of the checkpoint to a local dir and report it; Ray merges the ranks'
    dirs into one checkpoint directory in storage."""
    import ray.train
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="onegen-ckpt-") as tmp:
        d = Path(tmp)
        tag = f"step{step}"
        engine.save_checkpoint(str(d / DS_DIR), tag=tag, client_state={"step": step})
        save_file({"cpu": torch.get_rng_state()}, str(d / f"rng_rank{rank}.safetensors"))
        full = engine._zero3_consolidated_16bit_state_dict() if zero3 else engine.module.state_dict()
        if rank == 0:
            save_hf(lm, tokenizer, full, d / HF_DIR, config, p, step, special)
            (d / STATE_FILE).write_text(json.dumps({"step": step, "total_steps": total, "tag": tag,
                                                     "run_name": config["run_name"]}))
        ray.train.report({"step": step, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def save_hf(lm, tokenizer, full: dict[str, torch.Tensor], out: Path, config, p, step: int, special) -> None:
    """The full weights in Hugging Face format (LoRA merged in), loadable with from_pretrained."""
    from onegen_core.method.backbone import load_pretrained, save_checkpoint
    from onegen_core.method.lora import apply_lora, merged

    state = {k[len("lm."):]: v for k, v in full.items() if k.startswith("lm.")}
    meta = {"backbone": p.backbone.name, "tokenizer": "bpe-trained" if p.backbone.is_tiny() else "pretrained",
            "step": step, "run_name": config["run_name"], "lora": p.lora.enabled}
    if p.lora.enabled:
        # rebuild the peft model on CPU with the trained values, then fold the adapters in
        base, _, _ = load_pretrained(config["init_dir"], p.backbone)
        peft_lm = apply_lora(base, p.lora, special)
        peft_lm.load_state_dict(state, strict=True)
        save_checkpoint(merged(peft_lm), tokenizer, out, meta)
    else:
        save_checkpoint(lm, tokenizer, out, meta, state_dict=state)


def load_state(engine, d: Path, rank: int) -> int:
    from safetensors.torch import load_file

    state = json.loads((d / STATE_FILE).read_text())
    path, client = engine.load_checkpoint(str(d / DS_DIR), tag=state["tag"])
    if path is None:
        raise RuntimeError(f"{d}: DeepSpeed could not load tag {state['tag']}")
    rng = d / f"rng_rank{rank}.safetensors"
    if rng.exists():
        torch.set_rng_state(load_file(str(rng))["cpu"])
    return int(client["step"])


def _append(path: Path | None, row: dict) -> None:
    if path is None:
        return
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def _all_reduce_sum(values: list[float]) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _all_reduce_max(n: int) -> int:
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def _crash_once(marker: Path, step: int) -> None:
    """Testing the recovery path: the process dies as if the node were lost (SIGKILL, no cleanup)."""
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(step))
    log.warning("distributed.fail_at_step=%d: killing this worker", step)
    os.kill(os.getpid(), signal.SIGKILL)
