"""Training throughput: one OneGen step vs one plain SFT step (λr = 0) on the same batch.

Both steps run forward + backward + AdamW on the same collated batch of HotpotQA training examples
(reconstructed from the shared sample) with the embedded tiny backbone of params.yaml:
- SFT: the main sequences only (with λr = 0 the model never encodes the documents);
- OneGen: the main sequences plus every document of the batch (`{document} [RD]`), BPR/InfoNCE on
  the [RQ]/[RD] vectors.
OneGen processes more tokens (the documents), so the fair question is what it costs *beyond* them:
  tokens/s ratio = SFT tokens/s ÷ OneGen tokens/s, where OneGen's tokens include the documents'
(1.0 = OneGen processes a token as fast as SFT; the goal is ≤ 1.15). Below 1 means a document token
is cheaper than a main token (documents have no LM head over the vocabulary). Rounds alternate SFT and OneGen and the fastest of each is kept (this
machine is noisy); the figures come from one run. Writes metrics/onegen_overhead.json.

    python -m bench.onegen_overhead [--rounds 5] [--batch 4] [--out metrics]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from onegen_core.config import load_params
from onegen_core.data import load_hotpotqa
from onegen_core.method.backbone import build_tiny_backbone, train_bpe_tokenizer
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.tokens import add_special_tokens
from onegen_core.prepare.multihop import hops_from_supporting_facts, reconstruct_multihop
from onegen_core.training.dataset import tokenizer_texts

ROOT = Path(__file__).resolve().parents[1]


def timed_step(model: OneGenModel, batch, opt: torch.optim.Optimizer, seed: int) -> float:
    t0 = time.perf_counter()
    out = model(batch, generator=torch.Generator().manual_seed(seed))
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hotpotqa" / "train_sample.json"))
    ap.add_argument("--batch", type=int, default=4, help="examples in the batch")
    ap.add_argument("--rounds", type=int, default=5, help="alternating SFT/OneGen rounds (fastest kept)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "metrics"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = load_params(args.params)

    recs = load_hotpotqa(args.data)[:args.batch]
    examples = [reconstruct_multihop(r, hops_from_supporting_facts(r), p.reconstruct, 0) for r in recs]
    tok = train_bpe_tokenizer(tokenizer_texts(examples, []), p.tokenizer.vocab_size, p.tokenizer.min_frequency)
    add_special_tokens(tok)
    batch = OneGenCollator(tok, p.train.max_length, p.train.max_doc_length, p.loss.share_negatives)(examples)
    main_tokens = int(batch.attention_mask.sum())
    doc_tokens = int(batch.doc_attention_mask.sum())

    def make(lambda_r: float) -> tuple[OneGenModel, torch.optim.Optimizer]:
        lm = build_tiny_backbone(p.backbone.tiny, len(tok), seed=0)
        model = OneGenModel(lm, dataclasses.replace(p.loss, lambda_r=lambda_r)).train()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    sft, sft_opt = make(0.0)
    onegen, og_opt = make(p.loss.lambda_r or 1.0)
    timed_step(sft, batch, sft_opt, 0)  # warm-up: allocator, kernels
    timed_step(onegen, batch, og_opt, 0)
    t_sft, t_og = [], []
    for r in range(args.rounds):
        t_sft.append(timed_step(sft, batch, sft_opt, r))
        t_og.append(timed_step(onegen, batch, og_opt, r))
    s, o = min(t_sft), min(t_og)
    sft_tps = main_tokens / s
    og_tps = (main_tokens + doc_tokens) / o
    result = {
        "batch_examples": len(examples),
        "main_tokens": main_tokens,
        "doc_tokens": doc_tokens,
        "documents": int(batch.doc_input_ids.shape[0]),
        "rounds": args.rounds,
        "sft_step_s": s,
        "onegen_step_s": o,
        "sft_tokens_per_s": sft_tps,
        "onegen_tokens_per_s": og_tps,
        "tokens_per_s_ratio_sft_over_onegen": sft_tps / og_tps,
        "step_time_ratio_onegen_over_sft": o / s,
        "goal_tokens_per_s_ratio_at_most": 1.15,
        "loss": p.loss.kind,
        "lambda_r": p.loss.lambda_r,
        "threads": args.threads,
    }
    print(f"batch of {len(examples)} examples: {main_tokens} main tokens, {doc_tokens} document tokens "
          f"({result['documents']} documents)")
    print(f"SFT (λr=0)  step {s:.3f} s  {sft_tps:,.0f} tokens/s")
    print(f"OneGen      step {o:.3f} s  {og_tps:,.0f} tokens/s (main + documents)")
    print(f"tokens/s ratio SFT/OneGen = {result['tokens_per_s_ratio_sft_over_onegen']:.3f} (goal ≤ 1.15); "
          f"step-time ratio OneGen/SFT {result['step_time_ratio_onegen_over_sft']:.2f} "
          f"(the batch has {doc_tokens / main_tokens:.1f}x as many document tokens as main tokens)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "onegen_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
