"""The single-process core training run on the HotpotQA samples (`python -m tasks.train_core`).

Trains on the HotpotQA train sample plus the first `core_run.dev_train_count` dev questions, holds
out the rest of the dev sample, and reports held-out losses and teacher-forced [RQ]→[RD] Recall@1
before and after training. The distributed Ray/DeepSpeed run builds on the same pieces.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch

from onegen_core.backbone import build_backbone, save_checkpoint
from onegen_core.collator import OneGenCollator
from onegen_core.config import Params, flatten
from onegen_core.data import MultiHopRecord, load_hotpotqa
from onegen_core.evaluation import held_out_losses
from onegen_core.model import OneGenModel
from onegen_core.reconstruct import hops_from_supporting_facts, reconstruct_multihop
from onegen_core.retrieval_eval import retrieval_recall
from onegen_core.segments import Text, TrainingExample
from onegen_core.train_loop import StepMetrics, train
from tasks.train_data import load_examples as load_training_file

log = logging.getLogger("onegen.train_core")


def split_records(p: Params) -> tuple[list[MultiHopRecord], list[MultiHopRecord]]:
    train_recs = [r for path in p.core_run.hotpotqa_train for r in load_hotpotqa(path)]
    dev = load_hotpotqa(p.core_run.hotpotqa_dev)
    n = p.core_run.dev_train_count
    if not 0 <= n < len(dev):
        raise ValueError(f"core_run.dev_train_count={n} must leave held-out questions among {len(dev)} dev records")
    train_recs += dev[:n]
    held = dev[n:]
    overlap = {r.id for r in train_recs} & {r.id for r in held}
    if overlap:  # never evaluate on what was trained on
        raise ValueError(f"{len(overlap)} held-out questions are also training questions, e.g. {sorted(overlap)[:3]}")
    return train_recs, held


def corpus_texts(examples: list[TrainingExample], extra_files: list[str]):
    """Texts the tiny backbone's BPE is trained on: the training examples' text and documents, and
    any extra passage files (never the held-out questions)."""
    for ex in examples:
        for seg in ex.segments:
            if isinstance(seg, Text):
                yield seg.text
        for d in ex.documents:
            yield d.title
            yield " ".join(d.units)
    for path in extra_files:
        for item in json.loads(Path(path).read_text()):
            yield item["title"]
            yield item["text"]


def run(p: Params) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(p.train.seed)
    train_recs, held_recs = split_records(p)

    def build(records, cfg):
        return [reconstruct_multihop(r, hops_from_supporting_facts(r), cfg, p.train.seed) for r in records]

    if p.core_run.train_file:
        train_ex = load_training_file(p.core_run.train_file, p.core_run.tasks)
    else:
        train_ex = build(train_recs, p.reconstruct)
    # Held-out questions keep every context paragraph: Recall@1 is over the full distractor setting.
    held_ex = build(held_recs, dataclasses.replace(p.reconstruct, max_negative_paragraphs=10_000))
    overlap = {e.id for e in train_ex} & {e.id for e in held_ex}
    if overlap:
        raise ValueError(f"{len(overlap)} held-out questions are in the training file, e.g. {sorted(overlap)[:3]}")
    model_lm, tokenizer, ids, meta = build_backbone(
        p.backbone, corpus_texts(train_ex, p.tokenizer.corpus), p.tokenizer.vocab_size,
        p.tokenizer.min_frequency, p.train.seed,
    )
    n_params = sum(x.numel() for x in model_lm.parameters())
    log.info("backbone %s: %.2fM parameters, vocabulary %d", p.backbone.name, n_params / 1e6, len(tokenizer))

    log.info("examples: %d train, %d held out", len(train_ex), len(held_ex))
    collator = OneGenCollator(tokenizer, p.train.max_length, p.train.max_doc_length, p.loss.share_negatives)
    eval_collator = OneGenCollator(tokenizer, p.train.max_length, p.train.max_doc_length, share_negatives=False)
    model = OneGenModel(model_lm, p.loss)

    before = {**held_out_losses(model, eval_collator, held_ex, seed=1), **retrieval_recall(model, eval_collator, held_ex)}
    log.info("held out before training: %s", _fmt(before))

    from tqdm.auto import tqdm

    total = p.train.total_steps(len(train_ex))
    bar = tqdm(total=total, desc="train", unit="step")

    def on_step(m: StepMetrics) -> None:
        bar.update(1)
        bar.set_postfix(lm=f"{m.lm_loss:.3f}", ret=f"{m.retrieval_loss:.3f}", acc=f"{m.pair_accuracy:.2f}")
        if m.step % p.train.log_every == 0 or m.step == total - 1:
            log.info("step %d/%d lm %.4f ret %.4f pair-acc %.3f lr %.2e tok/s %.0f", m.step + 1, total,
                     m.lm_loss, m.retrieval_loss, m.pair_accuracy, m.lr, m.tokens_per_s)

    history = train(model, collator, train_ex, p.train, on_step=on_step)
    bar.close()

    after = {**held_out_losses(model, eval_collator, held_ex, seed=1), **retrieval_recall(model, eval_collator, held_ex)}
    log.info("held out after training: %s", _fmt(after))
    out_dir = save_checkpoint(model_lm, tokenizer, p.train.output_dir, {**meta, "task": "multihop", "steps": len(history)})

    window = max(1, len(history) // 10)
    counts = sum((m.stats for m in history), start=history[0].stats.__class__())
    result = {
        "train_examples": len(train_ex),
        "held_out_examples": len(held_ex),
        "parameters": n_params,
        "steps": len(history),
        "seconds": round(time.perf_counter() - t_start, 1),
        "train_lm_loss_first": _mean([m.lm_loss for m in history[:window]]),
        "train_lm_loss_last": _mean([m.lm_loss for m in history[-window:]]),
        "train_retrieval_loss_first": _mean([m.retrieval_loss for m in history[:window]]),
        "train_retrieval_loss_last": _mean([m.retrieval_loss for m in history[-window:]]),
        "held_out_before": before,
        "held_out_after": after,
        "checkpoint": str(out_dir),
    }
    # provenance beside the checkpoint: every resolved param and the counts of what training skipped
    (out_dir / "train_run.json").write_text(json.dumps({**result, "counts": dict(counts), "params": flatten(p)},
                                                       indent=2, default=float))
    path = Path(p.core_run.metrics_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float))
    log.info("wrote %s and checkpoint %s", path, out_dir)
    return result


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in d.items())


def main(argv: list[str] | None = None) -> None:
    from tasks.stage_common import stage_params

    p = stage_params(__doc__, argv)
    r = run(p)
    b, a = r["held_out_before"], r["held_out_after"]
    print(f"held-out Recall@1 {b['recall_at_1']:.3f} -> {a['recall_at_1']:.3f}; "
          f"Lg {b['lm_loss']:.3f} -> {a['lm_loss']:.3f}; Lr {b['retrieval_loss']:.3f} -> {a['retrieval_loss']:.3f}; "
          f"checkpoint {r['checkpoint']}; metrics {p.core_run.metrics_path}")


if __name__ == "__main__":
    main()
