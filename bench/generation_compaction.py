"""The generation engine with and without batch compaction, on a trained checkpoint and its index.

`generate` drops a row from the batch when it finishes (its KV-cache rows and the cache columns no other
row uses go with it); before 2026-12-04 finished rows rode along as padding to the end of the batch.
This runs the same evaluation work both ways — multi-hop questions in the distractor setting (R→G, the
evaluate stage's policy) and entity-linking windows (G→R under the copy constraint) — alternating the
order each round, and reports per round the wall-time ratio (without ÷ with) with its median and
range, the padded slots each computed, and whether the two produced the same outputs.

    python -m bench.generation_compaction [--questions 16] [--windows 16] [--rounds 3]

Needs `train` and `encode` to have run (evaluate.checkpoint, evaluate.index_uri).
Writes metrics/generation_compaction.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from onegen_core.config import BackboneConfig, load_params, parse_overrides
from onegen_core.evaluation.linking import held_out_articles, link_windows, windows_of
from onegen_core.evaluation.multihop import evaluate_multihop, held_out_questions
from onegen_core.inference.generation import EngineStats, RetrievalPolicy
from onegen_core.method.backbone import checkpoint_id, load_pretrained
from onegen_core.method.precision import resolve_inference_dtype

ROOT = Path(__file__).resolve().parents[1]


def _multihop(lm, tok, records, units, unit_doc, cfg, ck, compact: bool):
    policy = RetrievalPolicy(mode="rag", max_retrievals=cfg.max_retrievals, max_new_tokens=cfg.max_new_tokens)
    stats = EngineStats()
    t0 = time.perf_counter()
    rows, _ = evaluate_multihop(lm, tok, records, units, "distractor", policy, unit_doc, cfg.batch_size, ck,
                                stats=stats, compact=compact)
    out = [(r["generation"], [x["top"] for x in r["retrievals"]]) for r in rows]
    return time.perf_counter() - t0, stats, out


def _linking(lm, tok, windows, kb, cfg, ck, compact: bool):
    stats = EngineStats()
    t0 = time.perf_counter()
    preds, finish = link_windows(lm, tok, windows, kb, cfg.el_max_retrievals, cfg.el_batch_size, ck, stats=stats,
                                 compact=compact)
    out = {a: [(m.start, m.end, m.entity_id) for m in ms] for a, ms in sorted(preds.items())}
    return time.perf_counter() - t0, stats, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--questions", type=int, default=16, help="held-out HotpotQA questions (distractor setting)")
    ap.add_argument("--windows", type=int, default=16, help="entity-linking windows of the evaluate benchmarks")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "metrics" / "generation_compaction.json"))
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.questions < 0 or args.windows < 0 or args.questions + args.windows == 0:
        raise SystemExit("--rounds must be >= 1, and --questions/--windows >= 0, not both 0")
    torch.set_num_threads(args.threads)
    from tasks.adapters.lance_index import LanceIndex

    p = load_params(args.params, parse_overrides(args.set))
    cfg = p.evaluate
    dtype = resolve_inference_dtype(p.backbone.inference_dtype)
    lm, tok, _ = load_pretrained(cfg.checkpoint, BackboneConfig(name=cfg.checkpoint, dtype=dtype))
    lm.eval()
    ck = checkpoint_id(cfg.checkpoint)
    work = {}
    if args.questions:
        units = LanceIndex(cfg.index_uri, cfg.units_table)
        unit_doc = {r.id: r.doc_id for r in units.records()}.get
        records = held_out_questions(cfg.hotpotqa, "hotpotqa", args.questions)
        work["multihop"] = lambda c: _multihop(lm, tok, records, units, unit_doc, cfg, ck, c)
    if args.windows:
        kb = LanceIndex(cfg.index_uri, cfg.kb_table)
        articles = held_out_articles(cfg.elevant, cfg.el_benchmarks, cfg.max_articles,
                                     Path(p.prepare.out_dir) / "el_split.json")
        windows = windows_of(articles, cfg.el_max_chars)
        step = max(1, len(windows) // args.windows)  # spread over the benchmarks and window lengths
        windows = windows[::step][:args.windows]
        work["entity_linking"] = lambda c: _linking(lm, tok, windows, kb, cfg, ck, c)

    result: dict = {"checkpoint": cfg.checkpoint, "dtype": dtype, "threads": args.threads, "rounds": args.rounds,
                    "batch_size": cfg.batch_size, "el_batch_size": cfg.el_batch_size, "tasks": {}}
    for name, fn in work.items():
        secs: dict[bool, list[float]] = {True: [], False: []}
        outs: dict[bool, object] = {}
        stats: dict[bool, EngineStats] = {}
        for r in range(args.rounds):
            for compact in ((True, False) if r % 2 == 0 else (False, True)):  # alternate who goes first
                s, st, out = fn(compact)
                secs[compact].append(s)
                if compact in outs and outs[compact] != out:
                    raise SystemExit(f"{name}: compact={compact} gave different outputs in round {r}")
                outs[compact], stats[compact] = out, st
        ratios = sorted(b / a for a, b in zip(secs[True], secs[False]))
        same = outs[True] == outs[False]
        if isinstance(outs[True], list):
            differing = sum(a != b for a, b in zip(outs[True], outs[False]))
            units_compared = len(outs[True])
        else:
            differing = sum(outs[True].get(k) != outs[False].get(k) for k in set(outs[True]) | set(outs[False]))
            units_compared = len(set(outs[True]) | set(outs[False]))
        part = {
            "items": len(records) if name == "multihop" else len(windows),
            "seconds_with": sorted(round(x, 2) for x in secs[True]),
            "seconds_without": sorted(round(x, 2) for x in secs[False]),
            "ratio_without_over_with_median": round(statistics.median(ratios), 3),
            "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)],
            "slots_with": stats[True].slots_processed,
            "slots_without": stats[False].slots_processed,
            "real_tokens": stats[True].tokens_processed,
            "forward_passes": stats[True].forward_passes,
            "same_outputs": same,
            "differing": differing,
            "compared": units_compared,
        }
        result["tasks"][name] = part
        print(f"{name}: {part['items']} items, {args.rounds} rounds; time without/with compaction "
              f"median {part['ratio_without_over_with_median']}x (range {part['ratio_range'][0]}–"
              f"{part['ratio_range'][1]}); slots {part['slots_without']:,} vs {part['slots_with']:,} "
              f"for {part['real_tokens']:,} real tokens; outputs {'identical' if same else f'differ in {differing} of {units_compared}'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
