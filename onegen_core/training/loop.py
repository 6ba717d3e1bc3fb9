"""The one OneGen training loop, for one process (CPU or one GPU) and for every rank of a data-parallel run.

Reads top to bottom: order the data, collate this rank's micro-batches of the step, forward once per
micro-batch, backward, step. What differs between one process and a DeepSpeed rank is passed in as
`StepOps` (nanoGPT's habit: the distributed differences are a few lines, not a second loop):
- `backward(loss)`: `loss.backward()`, or DeepSpeed's `engine.backward` + `engine.step` per micro-batch;
- `step(step, lr) -> grad norm`: set the lr, clip and step AdamW, or read DeepSpeed's norm (its engine
  stepped at the accumulation boundary and its scheduler set the lr);
- `all_reduce_sum(values)`: identity, or a sum over ranks (global token counts and step figures).
Everything else (logging, validation, checkpoints) is the caller's `on_step`.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from onegen_core.config import TrainConfig
from onegen_core.method.collator import Batch, OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.segments import TrainingExample
from onegen_core.training.schedule import lr_at

log = logging.getLogger(__name__)


def data_order(n_examples: int, seed: int, epoch: int, sizes: Sequence[int] | None = None,
               global_batch: int = 1, pool_batches: int = 16) -> list[int]:
    """A permutation of the examples that depends only on (seed, epoch): a resumed run sees the
    same order.

    With `sizes` (length bucketing): the permutation is cut into pools of `pool_batches` global batches;
    inside a pool the examples are sorted by size and the pool's global batches are shuffled, so a batch
    holds examples of similar length (little padding) while the epoch stays a random order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=g).tolist()
    if sizes is None:
        return order
    out: list[int] = []
    pool = max(1, global_batch) * pool_batches
    for start in range(0, n_examples, pool):
        chunk = sorted(order[start:start + pool], key=lambda i: sizes[i])
        batches = [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
        for b in torch.randperm(len(batches), generator=g).tolist():
            out += batches[b]
    return out


def example_size(ex: TrainingExample) -> int:
    """Characters of an example's main text and documents: a tokenizer-free proxy of its token count."""
    from onegen_core.method.segments import Text

    return (sum(len(s.text) + 4 for s in ex.segments if isinstance(s, Text)) + 4 * len(ex.segments)
            + sum(len(u) for d in ex.documents for u in d.units))


def compute_precision(autocast: str, device: str | torch.device = "cpu"):
    """The context the forward pass runs in: torch.autocast at bfloat16, or nothing ('auto' resolves by
    `precision.resolve_autocast`: bfloat16 where the device computes it natively)."""
    import contextlib

    from onegen_core.method.precision import resolve_autocast

    kind = torch.device(device).type
    if resolve_autocast(autocast, kind) == "none":
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=torch.bfloat16)


def micro_batches_for_step(
    order: Sequence[int], step_in_epoch: int, cfg: TrainConfig, rank: int = 0, world_size: int = 1
) -> list[tuple[int, list[int]]]:
    """(global micro-batch index, example indices) of the micro-batches `rank` runs in one
    optimizer step.

    A step consumes `batch_size * grad_accum * world_size` examples of `order`; rank r takes the
    r-th contiguous block of `batch_size * grad_accum` and splits it into micro-batches. The global
    index numbers micro-batches across ranks, so the single-process run over the same global batch
    (`grad_accum * world_size` micro-batches, world_size=1) sees the very same micro-batches with
    the same indices, and the same pair-sampling seeds (see `pair_seed`).
    """
    per_rank = cfg.batch_size * cfg.grad_accum
    start = step_in_epoch * per_rank * world_size + rank * per_rank
    chunk = order[start:start + per_rank]
    first = rank * cfg.grad_accum
    return [(first + j, list(chunk[i:i + cfg.batch_size])) for j, i in enumerate(range(0, len(chunk), cfg.batch_size))]


def steps_per_epoch(n_examples: int, cfg: TrainConfig, world_size: int = 1) -> int:
    """Single process: a short last micro-batch is kept. Several ranks: only full global batches,
    because every rank must run the same number of micro-batches (each forward and backward is a
    collective under ZeRO-3); the few examples left over differ each epoch, since the order does."""
    if world_size == 1:
        return cfg.steps_per_epoch(n_examples)
    return n_examples // (cfg.batch_size * cfg.grad_accum * world_size)


def step_budget(n_examples: int, cfg: TrainConfig, world_size: int = 1) -> tuple[int, int]:
    """(optimizer steps of the run, warm-up steps): epochs of `steps_per_epoch`, capped by
    `max_steps`; the same arithmetic for the single-process and the distributed loop."""
    total = steps_per_epoch(n_examples, cfg, world_size) * cfg.epochs
    total = min(total, cfg.max_steps) if cfg.max_steps else total
    return total, int(math.ceil(cfg.warmup_ratio * total))


def pair_seed(seed: int, step: int, micro_index: int) -> int:
    """Seed of the positive/negative sampling of one micro-batch, a pure function of (seed, step,
    global micro-batch index): a resumed run and a differently sharded run sample the same pairs."""
    return ((seed + 17) * 1_000_003 + step) * 1_000_003 + micro_index


@dataclass
class StepMetrics:
    step: int
    epoch: int
    loss: float
    lm_loss: float
    retrieval_loss: float
    pair_accuracy: float
    lr: float
    tokens: int
    tokens_per_s: float
    grad_norm: float
    stats: Counter

    def as_dict(self) -> dict[str, float]:
        d = {k: v for k, v in self.__dict__.items() if k != "stats"}
        d.update({f"count/{k}": float(v) for k, v in self.stats.items()})
        return d


def forward_backward(
    model: OneGenModel,
    batches: list[tuple[int, Batch]],
    step: int,
    seed: int,
    backward: Callable[[torch.Tensor], None],
    gen_tokens_in_step: int | None = None,
    micro_batches_in_step: int | None = None,
    autocast: str = "none",
) -> dict:
    """Forward and backward over this process's micro-batches of one step; returns summed figures.

    `batches` holds (global micro-batch index, batch). Token losses are normalised by the GEN tokens
    of the whole step (`gen_tokens_in_step`, summed over every rank; default: these batches), so every
    token weighs the same whatever micro-batch or rank it falls in; the retrieval loss is a mean over
    pairs per micro-batch, averaged over the step's micro-batches (`micro_batches_in_step`). Summing
    the returned `loss` over ranks gives the loss of the same global batch run in one process.
    """
    n_gen = gen_tokens_in_step if gen_tokens_in_step is not None else sum(b.n_gen_tokens for _, b in batches)
    n_micro = micro_batches_in_step or len(batches)
    tot = {"loss": 0.0, "lm_sum": 0.0, "lm_tokens": 0, "ret": 0.0, "ret_n": 0, "acc": 0.0, "tokens": 0}
    stats: Counter = Counter()
    for micro_index, b in batches:
        gen = torch.Generator().manual_seed(pair_seed(seed, step, micro_index))
        with compute_precision(autocast, b.input_ids.device):
            out = model(b, generator=gen, gen_token_normaliser=n_gen or None, pair_normaliser=1.0 / n_micro)
        backward(out.loss)
        tot["loss"] += float(out.loss.detach())
        if out.n_gen_tokens:
            tot["lm_sum"] += float(out.lm_loss) * out.n_gen_tokens
            tot["lm_tokens"] += out.n_gen_tokens
        if out.n_pairs:
            tot["ret"] += float(out.retrieval_loss)
            tot["acc"] += out.pair_accuracy
            tot["ret_n"] += 1
        tot["tokens"] += b.n_tokens
        stats.update(out.stats)
    tot["stats"] = stats
    return tot


def summarise(tot: dict, step: int, epoch: int, lr: float, seconds: float, grad_norm: float) -> StepMetrics:
    nan = float("nan")
    return StepMetrics(
        step=step,
        epoch=epoch,
        loss=tot["loss"],
        lm_loss=tot["lm_sum"] / tot["lm_tokens"] if tot["lm_tokens"] else nan,
        retrieval_loss=tot["ret"] / tot["ret_n"] if tot["ret_n"] else nan,
        pair_accuracy=tot["acc"] / tot["ret_n"] if tot["ret_n"] else nan,
        lr=lr,
        tokens=tot["tokens"],
        tokens_per_s=tot["tokens"] / max(seconds, 1e-9),
        grad_norm=grad_norm,
        stats=tot["stats"],
    )


@dataclass
class StepOps:
    """What one process and a data-parallel rank do differently in a step (see the module docstring)."""

    backward: Callable[[torch.Tensor], None]
    step: Callable[[int, float], float]  # (step, lr) -> gradient norm
    all_reduce_sum: Callable[[list[float]], list[float]] = lambda values: values


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on vectors (norms, biases); empty groups dropped
    (LoRA has no trainable vectors, and DeepSpeed drops empty groups where a scheduler would not)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))


def local_ops(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> StepOps:
    """One process: plain autograd, global-norm clipping, AdamW at the scheduled lr."""

    def step(_: int, lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    return StepOps(backward=lambda loss: loss.backward(), step=step)


_SUMMED = ("loss", "lm_sum", "lm_tokens", "ret", "ret_n", "acc", "tokens")


def run_steps(
    model: torch.nn.Module,
    examples: Sequence[TrainingExample],
    collate: Callable[[list[TrainingExample]], Batch],
    cfg: TrainConfig,
    ops: StepOps,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
    on_step: Callable[[StepMetrics], None] | None = None,
) -> list[StepMetrics]:
    """Run optimizer steps `start_step` .. the budget (`step_budget`); returns this call's metrics.

    `model` is what the forward pass calls (a `OneGenModel`, or DeepSpeed's engine wrapping one).
    Step figures are summed over ranks with `ops.all_reduce_sum`, so every rank returns the global
    figures of the step; `StepMetrics.stats` stays this rank's.
    """
    if not examples:
        raise ValueError("no training examples")
    spe = steps_per_epoch(len(examples), cfg, world_size)
    if spe == 0:
        raise ValueError(f"{len(examples)} examples do not fill one global batch of "
                         f"{cfg.batch_size}x{cfg.grad_accum}x{world_size}")
    total, warmup = step_budget(len(examples), cfg, world_size)
    sizes = [example_size(ex) for ex in examples] if cfg.length_bucketing else None
    global_batch = cfg.batch_size * cfg.grad_accum * world_size
    history: list[StepMetrics] = []
    step = start_step
    while step < total:
        epoch, s = divmod(step, spe)
        order = data_order(len(examples), cfg.seed, epoch, sizes, global_batch)
        t0 = time.perf_counter()
        lr = lr_at(step, total, cfg.lr, warmup, cfg.min_lr_ratio, cfg.schedule)
        batches = [(j, collate([examples[i] for i in mb]))
                   for j, mb in micro_batches_for_step(order, s, cfg, rank, world_size)]
        # global normalisers: GEN tokens and micro-batches of the whole step, over every rank
        n_gen, n_micro = ops.all_reduce_sum([float(sum(b.n_gen_tokens for _, b in batches)), float(len(batches))])
        tot = forward_backward(model, batches, step, cfg.seed, ops.backward, gen_tokens_in_step=int(n_gen),
                               micro_batches_in_step=int(n_micro), autocast=cfg.autocast)
        grad_norm = ops.step(step, lr)
        tot.update(zip(_SUMMED, ops.all_reduce_sum([float(tot[k]) for k in _SUMMED])))
        m = summarise(tot, step, epoch, lr, time.perf_counter() - t0, grad_norm)
        history.append(m)
        step += 1
        if on_step:
            on_step(m)
    return history


def train(
    model: OneGenModel,
    collator: OneGenCollator,
    examples: Sequence[TrainingExample],
    cfg: TrainConfig,
    on_step: Callable[[StepMetrics], None] | None = None,
    device: str | torch.device = "cpu",
) -> list[StepMetrics]:
    """Train in place in this process (plain AdamW); returns the metrics of every optimizer step."""
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    model.train_top_layers(cfg.trainable_layers)
    if cfg.compile:
        from onegen_core.training.compiled import compile_top_layers

        compile_top_layers(model.lm, cfg.trainable_layers)
    ops = local_ops(model, make_optimizer(model, cfg), cfg)
    return run_steps(model, examples, lambda exs: collator(exs).to(device), cfg, ops, on_step=on_step)
