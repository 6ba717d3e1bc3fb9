"""The plain single-process OneGen training loop (CPU or one GPU).

Reads top to bottom: order the data, collate micro-batches, forward once per micro-batch, backward,
clip, step. The distributed loop (Ray Train + DeepSpeed) reuses `data_order`, `micro_batches_for_step`
and `OneGenModel.forward`; only the optimizer plumbing differs.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from onegen_core.collator import Batch, OneGenCollator
from onegen_core.config import TrainConfig
from onegen_core.model import OneGenModel
from onegen_core.schedule import lr_at
from onegen_core.segments import TrainingExample

log = logging.getLogger(__name__)


def data_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """A permutation of the examples that depends only on (seed, epoch): a resumed run sees the
    same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_examples, generator=g).tolist()


def micro_batches_for_step(order: Sequence[int], step_in_epoch: int, cfg: TrainConfig) -> list[list[int]]:
    """Example indices of the micro-batches of one optimizer step."""
    per_step = cfg.batch_size * cfg.grad_accum
    chunk = order[step_in_epoch * per_step:(step_in_epoch + 1) * per_step]
    return [list(chunk[i:i + cfg.batch_size]) for i in range(0, len(chunk), cfg.batch_size)]


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
    batches: list[Batch],
    grad_accum: int,
    generator: torch.Generator,
    backward: Callable[[torch.Tensor], None],
) -> dict:
    """Forward and backward over the micro-batches of one step; returns summed figures.

    Token losses are normalised by the GEN tokens of the whole step (every token weighs the same);
    the retrieval loss is averaged over micro-batches.
    """
    n_gen = sum(b.n_gen_tokens for b in batches) or None
    tot = {"loss": 0.0, "lm": 0.0, "lm_tokens": 0, "ret": 0.0, "ret_n": 0, "acc": 0.0, "tokens": 0}
    stats: Counter = Counter()
    for b in batches:
        out = model(b, generator=generator, gen_token_normaliser=n_gen, pair_normaliser=1.0 / len(batches))
        backward(out.loss)
        tot["loss"] += float(out.loss.detach())
        if out.n_gen_tokens:
            tot["lm"] += float(out.lm_loss) * out.n_gen_tokens
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
        lm_loss=tot["lm"] / tot["lm_tokens"] if tot["lm_tokens"] else nan,
        retrieval_loss=tot["ret"] / tot["ret_n"] if tot["ret_n"] else nan,
        pair_accuracy=tot["acc"] / tot["ret_n"] if tot["ret_n"] else nan,
        lr=lr,
        tokens=tot["tokens"],
        tokens_per_s=tot["tokens"] / max(seconds, 1e-9),
        grad_norm=grad_norm,
        stats=tot["stats"],
    )


def train(
    model: OneGenModel,
    collator: OneGenCollator,
    examples: Sequence[TrainingExample],
    cfg: TrainConfig,
    on_step: Callable[[StepMetrics], None] | None = None,
    device: str | torch.device = "cpu",
) -> list[StepMetrics]:
    """Train in place; returns the metrics of every optimizer step."""
    if not examples:
        raise ValueError("no training examples")
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    total = cfg.total_steps(len(examples))
    warmup = int(math.ceil(cfg.warmup_ratio * total))
    pair_gen = torch.Generator().manual_seed(cfg.seed + 17)
    history: list[StepMetrics] = []
    step = 0
    for epoch in range(cfg.epochs):
        order = data_order(len(examples), cfg.seed, epoch)
        for s in range(cfg.steps_per_epoch(len(examples))):
            if step >= total:
                return history
            t0 = time.perf_counter()
            lr = lr_at(step, total, cfg.lr, warmup, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = [collator([examples[i] for i in mb]).to(device) for mb in micro_batches_for_step(order, s, cfg)]
            tot = forward_backward(model, batches, cfg.grad_accum, pair_gen, lambda loss: loss.backward())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            m = summarise(tot, step, epoch, lr, time.perf_counter() - t0, grad_norm)
            history.append(m)
            if on_step:
                on_step(m)
            step += 1
    return history
