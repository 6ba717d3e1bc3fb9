"""The OneGen training loop on one Ray Train worker, under DeepSpeed (ZeRO-3 by default).

Every rank runs `worker_loop`. It runs the core's one training loop (`onegen_core.training.loop.run_steps`)
and passes in what differs under DeepSpeed (the hooks of `WorkerRun`):
- DeepSpeed owns the optimizer step, gradient averaging, clipping and the sharded state;
- losses are normalised by *global* counts (GEN tokens and micro-batches of the whole step, summed
  over ranks), so the summed loss and the gradient equal those of one process on the same batch;
- every rank makes the same module calls per micro-batch (`OneGenModel.agree_calls`), because
  ZeRO-3 gathers each layer's weights with a collective on every call;
- checkpoints (`tasks.adapters.train_checkpoint`) hold DeepSpeed's sharded state (optimizer, scheduler,
  weights), each rank's RNG and a Hugging Face copy of the full weights; they are reported through
  `ray.train.report`, so Ray restores the latest after a crash (`FailureConfig`) or a re-run of the same run;
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tasks.adapters.train_checkpoint import TrainedModel, check_resume_trust, load_state, write_checkpoint
from tasks.adapters.worker_settings import WorkerSettings

if TYPE_CHECKING:  # the worker imports these when it runs (torch, transformers: slow to import)
    from onegen_core.config import Params, TrainConfig
    from onegen_core.method.collator import OneGenCollator
    from onegen_core.method.model import OneGenModel
    from onegen_core.method.segments import TrainingExample
    from onegen_core.training.loop import StepMetrics
    from tasks.adapters.tracking import StepLogger

log = logging.getLogger("onegen.train_worker")

# the step figures every step logs (to MLflow, the history and Ray), from the core's `StepMetrics`
STEP_KEYS = ("loss", "lm_loss", "retrieval_loss", "pair_accuracy", "lr", "tokens_per_s", "grad_norm")
# the figures reported per task when the validation set holds several tasks
VAL_TASK_KEYS = ("recall_at_1", "recall_at_5", "open_recall_at_1", "open_recall_at_5", "queries")


def worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point: build this rank's run, train it to the end of its budget."""
    import ray.train
    import torch.distributed as dist

    settings = WorkerSettings.from_config(config)
    configure_logging()
    torch.set_num_threads(settings.params.distributed.threads_per_worker)
    ctx = ray.train.get_context()
    run = start_run(settings, ctx.get_world_rank(), ctx.get_world_size())
    run.train()
    dist.barrier()


def configure_logging() -> None:
    """INFO for our own loggers only: with the root at INFO, Ray Train v2 logs every `ray.train.report`
    call ("Reporting training result N: TrainingReport(...)"), one line per step of the run."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # basicConfig leaves the level alone when Ray has already given the root a handler (it has, in a
    # worker), and Ray Train's context logs through a logger named by its file path, under the root
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("onegen", "onegen_core", "tasks"):
        logging.getLogger(name).setLevel(logging.INFO)


def step_metrics(m: StepMetrics) -> dict[str, float]:
    """The figures one step logs, from the core's `StepMetrics` (summed over ranks; `stats` this rank's)."""
    metrics = {k: getattr(m, k) for k in STEP_KEYS}
    metrics["epoch"] = float(m.epoch)
    if m.stats.get("negatives_drawn"):  # this rank's step: how many negatives came from the query's own example
        metrics["own_negative_share"] = m.stats["negatives_own"] / m.stats["negatives_drawn"]
    return metrics


def validation_metrics(recall: dict[str, float], tasks: list[str]) -> dict[str, float]:
    """`retrieval_recall(..., by_task=True)`'s figures as logged: `val/<figure>` overall and, when the
    validation set holds several tasks, `val/<task>/<figure>` (the tasks' queries differ in number and
    difficulty, so an overall figure alone hides one task's collapse)."""
    out = {f"val/{k}": v for k, v in recall.items() if "/" not in k}
    if len(tasks) > 1:
        out.update({f"val/{t}/{k}": recall[f"{t}/{k}"] for t in tasks for k in VAL_TASK_KEYS})
    return out


@dataclass
class WorkerRun:
    """One rank's run: the model it trains and what the core loop's hooks (`backward`, `read_norm`,
    `on_step`) read and write. Rank 0 alone has a tracker, a history file and a progress bar."""

    settings: WorkerSettings
    rank: int
    world: int
    total: int                    # optimizer steps of the run (`step_budget`)
    model: TrainedModel
    train_examples: list[TrainingExample]
    val_examples: list[TrainingExample]
    collator: OneGenCollator      # negatives shared as `loss.share_negatives` says
    eval_collator: OneGenCollator  # share_negatives=False: validation and the lower-layer cache
    start_step: int = 0           # the restored checkpoint's step
    tracker: StepLogger | None = None  # rank 0
    history: Path | None = None   # rank 0's step log
    bar: Any = None               # ray.experimental.tqdm_ray.tqdm (rank 0)
    # the gradient norm measured here when DeepSpeed records none (ZeRO-0, see `backward`)
    own_norm: float = float("nan")

    def train(self) -> None:
        """Validate before the first step (a fresh run), then run the core loop from `start_step`."""
        from onegen_core.training.loop import StepOps, run_steps

        if self.start_step == 0:
            v = self.validate()
            if self.tracker is not None:
                self.tracker.log(v, 0)
                _append(self.history, {"step": 0, **v})
        ops = StepOps(backward=self.backward, step=self.read_norm, all_reduce_sum=_all_reduce_sum)
        run_steps(self.model.engine, self.train_examples, self.collator, self.settings.params.train, ops,
                  start_step=self.start_step, rank=self.rank, world_size=self.world, on_step=self.on_step)
        if self.bar is not None:
            self.bar.close()

    def validate(self) -> dict[str, float]:
        """Recall of the validation queries. Every rank runs the same examples: identical module calls,
        as ZeRO-3 needs; per task too, from the same forward passes."""
        from onegen_core.evaluation.retrieval import retrieval_recall
        from onegen_core.training.loop import compute_precision

        t_cfg = self.settings.params.train
        with compute_precision(t_cfg.autocast):
            r = retrieval_recall(self.model.engine.module, self.eval_collator, self.val_examples,
                                 batch_size=t_cfg.batch_size, by_task=True)
        return validation_metrics(r, sorted({e.task for e in self.val_examples}))

    def backward(self, loss: torch.Tensor) -> None:
        """DeepSpeed averages gradients over ranks; each rank's loss is its share of the global loss
        (global normalisers), so scale by the world size to get the gradient of the sum. Its engine
        steps at the accumulation boundary, with the lr its scheduler sets."""
        engine = self.model.engine
        engine.backward(loss * float(self.world), scale_wrt_gas=False)
        if engine.is_gradient_accumulation_boundary() and engine.zero_optimization_stage() == 0:
            # ZeRO-0 without DeepSpeed's bf16/fp16 optimizer wrapper clips but does not record the norm
            # (get_global_grad_norm() is None); the gradients are whole on every rank, so read it here.
            grads = [q.grad for q in engine.module.parameters() if q.grad is not None]
            norms = [torch.linalg.vector_norm(g.float()) for g in grads]  # one () tensor per parameter
            self.own_norm = float(torch.linalg.vector_norm(torch.stack(norms))) if grads else 0.0
        engine.step()

    def read_norm(self, step: int, lr: float) -> float:
        """The step's gradient norm (the core loop's `step` hook: DeepSpeed already stepped)."""
        norm = self.model.engine.get_global_grad_norm()
        return float(norm) if norm is not None else self.own_norm

    def on_step(self, m: StepMetrics) -> None:
        """After optimizer step `m.step`: validate on schedule, log (rank 0), report to Ray, with a
        checkpoint every `distributed.checkpoint_every` steps and at the last."""
        import ray.train

        p = self.settings.params
        done = m.step + 1
        last = done == self.total
        metrics = step_metrics(m)
        if self.bar is not None:
            self.bar.update(1)
        if done % p.train_data.eval_every == 0 or last:
            metrics.update(self.validate())
        if self.tracker is not None:
            self.record(done, metrics)
        if done % p.distributed.checkpoint_every == 0 or last:
            self.report_checkpoint(done, metrics)
            if p.distributed.fail_at_step == done and self.rank == self.world - 1:
                _crash_once(Path(self.settings.fail_marker), done)
        else:
            ray.train.report({"step": done, **metrics})

    def record(self, done: int, metrics: dict[str, float]) -> None:
        """Rank 0: the step's figures to MLflow and the history, and a log line every `train.log_every`."""
        self.tracker.log(metrics, done)
        _append(self.history, {"step": done, **metrics})
        if done % self.settings.params.train.log_every == 0 or done == self.total or done == 1:
            log.info("step %d/%d loss %.4f lm %.4f ret %.4f acc %.3f lr %.2e tok/s %.0f", done, self.total,
                     metrics["loss"], metrics["lm_loss"], metrics["retrieval_loss"], metrics["pair_accuracy"],
                     metrics["lr"], metrics["tokens_per_s"])

    def report_checkpoint(self, step: int, metrics: dict[str, float]) -> None:
        """Write this rank's part of the checkpoint to a local dir and report it; Ray merges the ranks'
        dirs into one checkpoint directory in storage."""
        import ray.train

        with tempfile.TemporaryDirectory(prefix="onegen-ckpt-") as tmp:
            write_checkpoint(Path(tmp), self.model, self.settings, self.rank, step, self.total)
            ray.train.report({"step": step, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def start_run(settings: WorkerSettings, rank: int, world: int) -> WorkerRun:
    """Everything a rank builds before its first step, in the order that fixes the numerics: data,
    the seed, the model (frozen layers, compile, LoRA), the DeepSpeed engine, then the restored state."""
    from onegen_core.method.collator import OneGenCollator
    from onegen_core.method.model import OneGenModel
    from onegen_core.training.dataset import load_examples, validation_examples
    from onegen_core.training.loop import step_budget

    p = settings.params
    t_cfg = p.train
    train_ex = load_examples(settings.train_file, p.train_data.tasks, p.train_data.caps())
    val_ex = validation_examples(dataclasses.replace(p.train_data, val_file=settings.val_file))
    total, warmup = step_budget(len(train_ex), t_cfg, world)

    torch.manual_seed(t_cfg.seed)
    lm, tokenizer, special = build_lm(settings.init_dir, p)
    model = OneGenModel(lm, p.loss)
    collator = OneGenCollator(tokenizer, t_cfg.max_length, t_cfg.max_doc_length, p.loss.share_negatives)
    eval_collator = OneGenCollator(tokenizer, t_cfg.max_length, t_cfg.max_doc_length, share_negatives=False)
    prepare_layers(model, [*train_ex, *val_ex], eval_collator, t_cfg, rank, world)
    engine = build_engine(model, settings, total, warmup, world)
    zero3 = engine.zero_optimization_partition_weights()
    if world > 1:
        model.agree_calls = _all_reduce_max

    run = WorkerRun(settings, rank, world, total, TrainedModel(engine, lm, tokenizer, special, zero3),
                    train_ex, val_ex, collator, eval_collator)
    run.start_step = restore(engine, settings, rank)
    record_start(settings, rank, world, run.start_step)
    if rank == 0:
        from ray.experimental.tqdm_ray import tqdm

        from tasks.adapters.tracking import StepLogger

        run.tracker = StepLogger(settings.tracking_uri, settings.mlflow_run_id)
        run.history = Path(settings.history_path)
        run.bar = tqdm(total=total, desc=f"train ({world} workers)", position=0)
        run.bar.update(run.start_step)
    return run


def record_start(settings: WorkerSettings, rank: int, world: int, start_step: int) -> None:
    """One line per rank each time a worker group starts, in `events.jsonl` beside the step history: the
    run's own record of where each rank ran and the step it started from (0, or the step after a restored
    checkpoint: a retry after a lost worker or node shows as a second group start)."""
    import ray.util

    _append(Path(settings.history_path).with_name("events.jsonl"),
            {"event": "worker_start", "rank": rank, "world": world, "node_ip": ray.util.get_node_ip_address(),
             "start_step": start_step, "time": round(time.time(), 3)})


def build_lm(init_dir: str, p: Params) -> tuple[torch.nn.Module, Any, list[int]]:
    """The backbone every rank starts from: the run's init checkpoint (tiny: trained tokenizer +
    seeded weights) or the pretrained model, with the OneGen tokens; LoRA-wrapped on request."""
    from onegen_core.method.backbone import load_pretrained
    from onegen_core.method.lora import apply_lora
    from onegen_core.method.tokens import SPECIAL_TOKENS

    lm, tokenizer, ids = load_pretrained(init_dir, p.backbone)
    special = [ids[t] for t in SPECIAL_TOKENS]
    if p.lora.enabled:
        lm = apply_lora(lm, p.lora, special)
    return lm, tokenizer, special


def prepare_layers(model: OneGenModel, examples: list[TrainingExample], eval_collator: OneGenCollator,
                   t_cfg: TrainConfig, rank: int, world: int) -> None:
    """`train.trainable_layers`: freeze the lower layers (and, with several ranks, cache their output
    for every sequence of the run); `train.compile`: compile the trained decoder layers."""
    from onegen_core.method.precision import autocast_dtype

    if t_cfg.trainable_layers:
        model.train_top_layers(t_cfg.trainable_layers, autocast_dtype(t_cfg.autocast))
        if model.lower_cache is not None and world > 1:
            # ZeRO-3 needs the same module calls on every rank: fill the cache for every sequence any
            # rank will see, before the weights are partitioned, then refuse misses
            fill_lower_cache(model, examples, eval_collator, t_cfg, rank)
    if t_cfg.compile:
        from onegen_core.training.compiled import compile_top_layers

        log.info("rank %d: %d decoder layers run through torch.compile", rank,
                 compile_top_layers(model.lm, t_cfg.trainable_layers))


def build_engine(model: OneGenModel, settings: WorkerSettings, total: int, warmup: int, world: int) -> Any:
    """The DeepSpeed engine around `model`: torch AdamW, the run's lr schedule, the resolved config."""
    import deepspeed

    from onegen_core.training.loop import make_optimizer
    from onegen_core.training.schedule import lr_at
    from tasks.adapters.deepspeed_config import zero_stage

    p, t_cfg = settings.params, settings.params.train
    if p.lora.enabled and zero_stage(settings.ds_config) == 3:
        _register_token_adapter_weights(model.lm)
    optimizer = make_optimizer(model, t_cfg)
    # the lr of step s is lr_at(s): DeepSpeed steps this scheduler once per optimizer step
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, total, t_cfg.lr, warmup, t_cfg.min_lr_ratio, t_cfg.schedule) / t_cfg.lr
    )
    skip_shm_comm_op(world)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=settings.ds_config)
    return engine


def restore(engine, settings: WorkerSettings, rank: int) -> int:
    """The step to start from: Ray's latest checkpoint of the run, else the one `distributed.resume_from`
    chose, else 0."""
    import ray.train

    p = settings.params
    restored = ray.train.get_checkpoint()
    if restored is None and settings.resume_dir:
        # a checkpoint chosen on request: the driver checked it, and so does every rank that unpickles it
        check_resume_trust(settings.resume_dir, p.distributed.storage_path, p.distributed.trust_resume)
        restored = ray.train.Checkpoint(settings.resume_dir)
    if restored is None:
        return 0
    with restored.as_directory() as d:
        step = load_state(engine, Path(d), rank)
    log.info("rank %d resumed at step %d from %s", rank, step, restored.path)
    return step


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
