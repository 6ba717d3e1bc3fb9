"""CPU training recipes side by side: tokens/s and validation Recall@1 per minute of training, one run.

Every recipe starts from the same backbone (params `backbone.name`) and trains on the same examples of the
label stage's `train.jsonl` (params `train_data.tasks`) for the same wall-clock budget, in this process,
with the one training loop (`onegen_core.training.loop.run_steps`). Then the teacher-forced Recall@1 of
its [RQ] vectors over each question's own units is measured on the label stage's validation split
(`val.jsonl`, multi-hop examples), never on held-out questions. Recipes:

- `full`: every layer trains;
- `lora`: peft adapters on every projection, the OneGen token rows trainable;
- `top8`, `top4`: only the top K decoder layers train; the frozen layers' output is computed once per
  sequence and cached (`train.trainable_layers`), so the first epoch pays a forward pass and later
  epochs run K layers;
- `top4-fewer-docs`: top4 with at most 2 distractor paragraphs per question (fewer negative units);
- `top4-bucketed`: top4 with length bucketing (`train.length_bucketing`).

Every recipe runs eagerly (`train.compile` off: compilation would be a share of a short budget; its own gain
on the default recipe is in docs/RESULTS.md, 2026-12-06 evening).

Tokens/s counts real (non-padding) tokens of main and document rows per second of training, cache
filling included; Recall@1 per minute is (after - before) / minutes trained. This machine is noisy and
the recipes run one after another, so ratios between recipes carry the noise of a single run: figures
are reported as measured, with the steps each recipe completed.

    python -m bench.train_throughput [--minutes 5] [--recipes full top4 …] [-S key=value …] [--out metrics]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from onegen_core.config import LoraSettings, load_params, parse_overrides
from onegen_core.data.atomic_write import write_text_atomic
from onegen_core.evaluation.retrieval import retrieval_recall
from onegen_core.method.backbone import load_pretrained
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.precision import autocast_dtype, resolve_autocast
from onegen_core.method.segments import TrainingExample
from onegen_core.training.dataset import load_examples
from onegen_core.training.loop import StepOps, compute_precision, local_ops, make_optimizer, run_steps

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("full", "lora", "top8", "top4", "top4-fewer-docs", "top4-bucketed")


class _OutOfTime(Exception):
    pass


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of a sorted, non-empty list."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def fewer_docs(ex: TrainingExample, keep_distractors: int) -> TrainingExample:
    """The example with at most `keep_distractors` paragraphs that hold no positive of any query."""
    gold = {u for q in ex.queries for u in q.positives}
    docs, extra = [], 0
    for d in ex.documents:
        if set(d.unit_ids()) & gold:
            docs.append(d)
        elif extra < keep_distractors:
            docs.append(d)
            extra += 1
    kept = {u for d in docs for u in d.unit_ids()}
    queries = tuple(dataclasses.replace(q, negatives=tuple(u for u in q.negatives if u in kept)) for q in ex.queries)
    return dataclasses.replace(ex, documents=tuple(docs), queries=queries)


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per recipe (wall clock)")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    ap.add_argument("--train-examples", type=int, default=0, help="train on at most this many examples (0 = all)")
    ap.add_argument("--val-examples", type=int, default=32, help="multi-hop validation examples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "metrics"))
    return ap.parse_args(argv)


def validation_recall(model: OneGenModel, collator: OneGenCollator, val_ex: list[TrainingExample], t_cfg) -> float:
    """Teacher-forced Recall@1 of the [RQ] vectors on the validation examples; the model is left training."""
    model.eval()
    with compute_precision(t_cfg.autocast):
        r = retrieval_recall(model, collator, val_ex, batch_size=t_cfg.batch_size)
    model.train()
    return r["recall_at_1"]


def recipe_model(name: str, base, p, ids: dict[str, int], train_ex: list[TrainingExample]):
    """(model, train settings, examples) of one recipe, on a copy of `base`. A constant lr (no warm-up, no
    decay): the budget is wall-clock time, not a number of steps."""
    lm = copy.deepcopy(base)
    examples, cfg = train_ex, dataclasses.replace(p.train, trainable_layers=0, length_bucketing=False, epochs=1000,
                                                  max_steps=0, warmup_ratio=0.0, min_lr_ratio=1.0, compile=False)
    if name == "lora":
        from onegen_core.method.lora import apply_lora
        from onegen_core.method.tokens import SPECIAL_TOKENS

        lm = apply_lora(lm, LoraSettings(enabled=True), [ids[t] for t in SPECIAL_TOKENS])
    model = OneGenModel(lm, p.loss)
    if name.startswith("top"):
        k = int(name[3])
        cfg = dataclasses.replace(cfg, trainable_layers=k, length_bucketing=name.endswith("bucketed"))
        model.train_top_layers(k, autocast_dtype(cfg.autocast))
    if name.endswith("fewer-docs"):
        examples = [fewer_docs(e, 2) if e.task == "multihop" else e for e in train_ex]
    model.train()
    return model, cfg, examples


def train_for(model: OneGenModel, examples: list[TrainingExample], collator: OneGenCollator, cfg,
              seconds: float) -> tuple[list, int, float]:
    """Train until `seconds` of wall clock have passed: (step metrics, real tokens, seconds trained)."""
    ops = local_ops(model, make_optimizer(model, cfg), cfg)
    start = time.perf_counter()
    steps, tokens = [], [0]

    def on_step(m):
        steps.append(m)
        tokens[0] += m.tokens
        if time.perf_counter() - start > seconds:
            raise _OutOfTime

    try:
        run_steps(model, examples, collator, cfg, StepOps(ops.backward, ops.step), on_step=on_step)
    except _OutOfTime:
        pass
    return steps, tokens[0], time.perf_counter() - start


def recipe_result(model: OneGenModel, steps: list, tokens: int, seconds: float, before: float, after: float) -> dict:
    r = {
        "steps": len(steps), "seconds": round(seconds, 1), "tokens": tokens,
        "tokens_per_s": tokens / seconds, "recall_at_1_before": before, "recall_at_1_after": after,
        "recall_at_1_gain_per_minute": (after - before) / (seconds / 60),
        "trainable_parameters": sum(x.numel() for x in model.parameters() if x.requires_grad),
        "lm_loss_last": steps[-1].lm_loss if steps else float("nan"),
        "retrieval_loss_last": steps[-1].retrieval_loss if steps else float("nan"),
        "cache_sequences": len(model.lower_cache) if model.lower_cache else 0,
    }
    # the spread of one recipe's steps: the first epoch of a top-K recipe also fills the frozen layers'
    # cache, so its steps are slower by design; the quartiles say how much a step varies on this machine
    rates = sorted(m.tokens_per_s for m in steps)
    r["step_tokens_per_s_quartiles"] = [round(quantile(rates, q), 1) for q in (0.25, 0.5, 0.75)] if rates else []
    return r


def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    p = load_params(args.params, parse_overrides(args.set))
    t_cfg = p.train
    train_ex = load_examples(p.train_data.train_file, p.train_data.tasks, p.train_data.caps())
    if args.train_examples:
        train_ex = train_ex[:args.train_examples]
    val_ex = load_examples(p.train_data.val_file, ["multihop"])[:args.val_examples]
    base, tok, ids = load_pretrained(p.backbone.name, p.backbone)
    col = OneGenCollator(tok, t_cfg.max_length, t_cfg.max_doc_length, p.loss.share_negatives)
    eval_col = OneGenCollator(tok, t_cfg.max_length, t_cfg.max_doc_length, share_negatives=False)

    t0 = time.perf_counter()
    before = validation_recall(OneGenModel(base, p.loss), eval_col, val_ex, t_cfg)
    print(f"untrained: validation Recall@1 {before:.3f} ({len(val_ex)} examples, {time.perf_counter() - t0:.0f} s)",
          flush=True)
    results: dict[str, dict] = {}
    for name in args.recipes:
        model, cfg, examples = recipe_model(name, base, p, ids, train_ex)
        steps, tokens, seconds = train_for(model, examples, col, cfg, args.minutes * 60)
        r = results[name] = recipe_result(model, steps, tokens, seconds, before,
                                          validation_recall(model, eval_col, val_ex, t_cfg))
        q = r["step_tokens_per_s_quartiles"] or [float("nan")] * 3
        print(f"{name:>16}: {r['steps']:4d} steps in {r['seconds']:.0f} s, {r['tokens_per_s']:7.0f} tokens/s "
              f"(per step: median {q[1]:.0f}, quartiles {q[0]:.0f}-{q[2]:.0f}), "
              f"Recall@1 {before:.3f} -> {r['recall_at_1_after']:.3f} ({r['recall_at_1_gain_per_minute']:+.4f}/min), "
              f"{r['trainable_parameters'] / 1e6:.1f}M trainable", flush=True)
        del model
    ref = results.get("full")
    if ref:
        print("tokens/s over full fine-tuning (the same run):", ", ".join(
            f"{n} {r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" for n, r in results.items() if n != "full"), flush=True)
        for r in results.values():
            r["tokens_per_s_ratio_over_full"] = r["tokens_per_s"] / ref["tokens_per_s"]
    out = {"backbone": p.backbone.name, "autocast": t_cfg.autocast, "autocast_resolved": resolve_autocast(t_cfg.autocast),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "minutes_per_recipe": args.minutes,
           "train_examples": len(train_ex), "validation_examples": len(val_ex), "batch_size": t_cfg.batch_size,
           "loss": p.loss.kind, "lr": t_cfg.lr, "threads": args.threads, "recipes": results}
    write_text_atomic(Path(args.out) / "train_throughput.json", json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
