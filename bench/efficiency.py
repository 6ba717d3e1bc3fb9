"""OneGen inference efficiency as the paper's Fig. 3 defines it (§4.3.1, App. F.5.1, H.4.1), with spreads.

(a) RAG, 5 dialogue rounds, a query (the round's instruction) of L tokens, 30-token documents, 10 output
    tokens a round, batch 1; (b) the same with L = 100 and the number of rounds rising;
(c) entity linking over a 1,000-token sentence with M mentions, each mention one retrieval.

Methods (the same generator, documents and scripted tokens, so only the retrieval mechanics differ;
`bench/efficiency_workload.py` runs them and logs every model call with forward hooks):
- onegen: the [RQ] decode step's hidden state is the query; the passage (R→G) or <CON> (G→R) continues
  from the KV cache. Its only extra work over the lower bound is that step and the search.
- grit: the same LLM re-encodes only the round's query text (L tokens) in a second pass, without the
  cache, after the same [RQ] decision step.
- pipeline: a separate retriever (MiniLM-L6, 22.7M parameters) encodes the query text after the same
  [RQ] decision step; in (c) each mention is linked afterwards with its own QA prompt to the generator
  (EntGPT as in H.4.1: sentence + instruction + 4 candidates of 30 tokens, one output token).
- lower: no retrieval (the document is pasted for free, no [RQ], no search).

Generators: SmolLM2-135M (the default backbone, `backbone.name` of params.yaml; MiniLM is 17 % of it, the
closest this machine allows to the paper's Contriever at 1.5 % of Mistral-7B) and the tiny test backbone
as a fast check (`--quick`: tiny only). Generation is scripted, as the paper's optimum-benchmark feeds
random tokens, so an untrained model runs exactly the paper's workload.

Timing: methods interleaved in a rotated order, `--repeats` times after one warm-up run each; every
ratio is taken per repeat (runs adjacent in time) and reported as median [min, max]. Counts (decoder
calls, tokens) are exact. Repeats in one process share its state (allocator, thread placement, the
machine's load at the time), so their spread understates what a re-run sees: `--rounds K` runs the whole
grid K times, each in a fresh process one after the other, and pools the K x repeats values of every
ratio (median [min, max] over all of them; each round's median kept as `round_medians`). `--check REF`
compares this run's medians with the spreads of a reference JSON (same model, setting and workload) and
reports how many fall inside; the committed quick reference is `metrics/efficiency_quick.json`.
The physical limit: OneGen's extra time per retrieval over the lower bound,
divided by one decode step (measured from the same runs' engine steps) plus one index search (timed in
the same repeat): 1.0 means a retrieval costs exactly one step and one search; goal ≤ 1.1.

    python -m bench.efficiency            # SmolLM2-135M and tiny, full grid (~80 min on 2 AVX2 cores)
    python -m bench.efficiency --quick --check metrics/efficiency_quick.json --out /tmp/eff
                                          # tiny model, reduced grid (~2 min), against the committed spread
    python -m bench.efficiency --quick --rounds 5 --out metrics --name efficiency_quick   # that reference
    # a re-run on record beside it (metrics/efficiency_quick_checks.json):
    python -m bench.efficiency --quick --check metrics/efficiency_quick.json --out /tmp/eff \
        --record-check metrics/efficiency_quick_checks.json

Writes metrics/efficiency.{json,csv,png} (`--name` changes the stem).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.efficiency_workload import EL_METHODS, RAG_METHODS, Run, Workload, build_workload, run_el, run_rag
from onegen_core.config import TinyBackboneConfig, load_params
from onegen_core.data import load_passages

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "2wikimultihopqa" / "corpus_sample.json"
GOAL_PHYSICAL_LIMIT = 1.1
PAPER_RETRIEVER_SHARE = round(109e6 / 7.24e9, 4)  # Contriever (BERT-base) against Mistral-7B-v0.1
# what each extra decoder call per retrieval is, over the lower bound
PASSES = {
    "onegen": "+1 generator pass: the [RQ] decode step, whose hidden state is the query vector",
    "grit": "+1 generator pass for the [RQ] decision step, +1 separate generator pass re-encoding the round's query text",
    "pipeline": "+1 generator pass for the [RQ] decision step, +1 retriever (MiniLM) pass encoding the query text",
    "onegen_el": "+1 generator pass a mention: [RQ] and <CON> fed together after the mention",
    "pipeline_el": "+1 separate generator pass a mention: the EntGPT-style QA prompt (one output token)",
}


def load_generators(params, quick: bool) -> dict[str, tuple[torch.nn.Module, object]]:
    """{name: (lm, tokenizer)}: the tiny backbone (always) and SmolLM2-135M (unless quick)."""
    from onegen_core.method.backbone import build_backbone, build_tiny_backbone, train_bpe_tokenizer

    texts = [p.text for p in load_passages(CORPUS)[:3000]]
    tok = train_bpe_tokenizer(texts, vocab_size=params.tokenizer.vocab_size)
    cfg = TinyBackboneConfig(**{**params.backbone.tiny.__dict__, "max_position_embeddings": 16384})
    out = {"tiny": (build_tiny_backbone(cfg, len(tok), seed=0).eval(), tok)}
    if not quick:
        if params.backbone.is_tiny():
            raise SystemExit("params.yaml's backbone is the tiny one: name a pretrained backbone or use --quick")
        lm, stok, _, _ = build_backbone(params.backbone, None, params.tokenizer.vocab_size)
        # loaded in backbone.dtype (float32 here; a GGUF-loaded model refuses .float())
        out["smollm2-135m"] = (lm.eval(), stok)
    return out


def grid(kind: str, quick: bool) -> list[tuple[str, int, dict]]:
    """(setting, x, workload arguments) of every point for one generator."""
    if quick:
        a, b, c, sentence = [25, 400], [10], [10], 300
    elif kind == "tiny":
        a, b, c, sentence = [25, 50, 100, 200, 400], [10, 20, 40, 80, 100], [10, 25, 50, 75, 100], 1000
    else:  # SmolLM2-135M on 2 CPU cores: a reduced grid, every setting kept
        a, b, c, sentence = [25, 100, 400], [10, 30], [10, 50], 1000
    return ([("a", x, {"rounds": 5, "qlen": x, "out_len": 10}) for x in a]
            + [("b", x, {"rounds": x, "qlen": 100, "out_len": 10}) for x in b]
            + [("c", x, {"sentence_len": sentence, "mentions": x}) for x in c])


def run_method(w: Workload, setting: str, method: str, x: int, kw: dict) -> Run:
    return (run_rag if setting in "ab" else run_el)(method, w, seed=x, **kw)


def search_seconds(w: Workload, n: int = 50) -> float:
    """Median wall time of one search of the OneGen index, called as the engine calls it in RAG mode (one
    query row, top 1, the pasted documents excluded)."""
    q = w.index.vectors[:1]  # (1, dim)
    pasted = [{r.doc_id for r in w.records[:5]}]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        w.index.search(q, 1, None, pasted)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def spread(values: list[float], digits: int = 4) -> dict:
    """Median [min, max] and every value (ratios: 4 decimals; seconds: pass digits=7, a search takes µs)."""
    return {"median": round(float(np.median(values)), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "per_repeat": [round(v, digits) for v in values]}


def calls(run: Run) -> dict:
    """Exact counts of one run: decoder calls by kind and the tokens they fed."""
    log = run.log
    return {"generator_cached": log.count("generator", separate=False),
            "generator_separate": log.count("generator", separate=True),
            "retriever": log.count("retriever"),
            "generator_tokens": sum(c.width * c.rows for c in log.select("generator")),
            "separate_pass_tokens": [c.width for c in log.select("generator", separate=True)][:3],
            "retriever_tokens": sum(c.width * c.rows for c in log.select("retriever")),
            "searches": run.stats.searches, "retrievals": run.retrievals}


def measure_point(w: Workload, setting: str, x: int, kw: dict, repeats: int) -> dict:
    """Every method of one point, interleaved; ratios per repeat; counts; the physical limit (RAG)."""
    methods = RAG_METHODS if setting in "ab" else EL_METHODS
    for m in methods:
        run_method(w, setting, m, x, kw)  # warm-up: allocator, caches, lazy init
    runs: dict[str, list[Run]] = {m: [] for m in methods}
    searches: list[float] = []
    for r in range(repeats):
        for m in methods[r % len(methods):] + methods[:r % len(methods)]:
            runs[m].append(run_method(w, setting, m, x, kw))
        searches.append(search_seconds(w))
    sec = {m: [run.seconds for run in runs[m]] for m in methods}
    if setting == "c":  # the pipeline = its extraction (the lower bound's run) + its linking stage
        sec["pipeline"] = [a + b for a, b in zip(sec.pop("lower"), sec.pop("linking"))]
        sec["lower"] = [run.seconds for run in runs["lower"]]
    n = runs["onegen"][0].retrievals
    ratios = {f"{m}/onegen": spread([a / b for a, b in zip(sec[m], sec["onegen"])]) for m in sec if m not in ("onegen", "lower")}
    ratios["onegen/lower"] = spread([a / b for a, b in zip(sec["onegen"], sec["lower"])])
    counts = {m: calls(runs[m][0]) for m in methods}
    low = counts["lower"]["generator_cached"] + counts["lower"]["generator_separate"]
    extra = {m: round((c["generator_cached"] + c["generator_separate"] + c["retriever"] - low) / n, 4)
             for m, c in counts.items() if m not in ("lower", "linking")}
    if setting == "c":
        extra["pipeline"] = round(counts["linking"]["generator_separate"] / n, 4)
    entry = {"setting": setting, "x": x, "workload": kw, "retrievals": n,
             "seconds": {m: spread(v, 7) for m, v in sec.items()}, "ratios": ratios,
             "calls": counts, "extra_passes_per_retrieval": extra}
    if setting in "ab":
        steps = [float(np.median(run.log.decode_step_seconds())) for run in runs["onegen"]]
        limit = [((o - lo) / n) / (d + s) for o, lo, d, s in zip(sec["onegen"], sec["lower"], steps, searches)]
        entry["physical_limit"] = {**spread(limit), "decode_step_s": spread(steps, 7), "search_s": spread(searches, 7),
                                   "extra_s_per_retrieval": spread([(o - lo) / n for o, lo in zip(sec["onegen"], sec["lower"])], 7)}
    return entry


def describe(kind: str, lm: torch.nn.Module, minilm) -> dict:
    n = sum(p.numel() for p in lm.parameters())
    m = sum(p.numel() for p in minilm.model.parameters())
    cfg = lm.config
    return {"parameters": n, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
            "dtype": str(next(lm.parameters()).dtype).removeprefix("torch."),
            "retriever_parameters": m, "retriever_share_of_generator": round(m / n, 4),
            "paper_retriever_share": PAPER_RETRIEVER_SHARE}


def print_point(kind: str, e: dict) -> None:
    r = e["ratios"]
    parts = [f"{k} {v['median']:.3f} [{v['min']:.3f}-{v['max']:.3f}]" for k, v in r.items()]
    if "physical_limit" in e:
        p = e["physical_limit"]
        parts.append(f"limit {p['median']:.2f} [{p['min']:.2f}-{p['max']:.2f}]")
    print(f"{kind:>13} ({e['setting']}) x={e['x']:<4} " + "  ".join(parts)
          + f"\n{'':>22}extra passes/retrieval {e['extra_passes_per_retrieval']}", flush=True)


def summarise(models: dict, points: list[dict]) -> dict:
    """Per generator: the physical limit over the RAG points, and the range of each ratio."""
    out = {}
    for kind in models:
        pts = [p for p in points if p["model"] == kind]
        lim = [p["physical_limit"]["median"] for p in pts if "physical_limit" in p]
        worst = max((p for p in pts if "physical_limit" in p), key=lambda p: p["physical_limit"]["median"])
        out[kind] = {
            "physical_limit_worst_point": {"setting": worst["setting"], "x": worst["x"], **worst["physical_limit"]},
            "physical_limit_median_over_points": round(float(np.median(lim)), 4),
            "physical_limit_goal_met": bool(worst["physical_limit"]["median"] <= GOAL_PHYSICAL_LIMIT),
            "ratio_ranges": {k: [min(p["ratios"][k]["median"] for p in pts if k in p["ratios"]),
                                 max(p["ratios"][k]["median"] for p in pts if k in p["ratios"])]
                             for k in sorted({k for p in pts for k in p["ratios"]})},
            "extra_passes_per_retrieval": {m: sorted({p["extra_passes_per_retrieval"][m] for p in pts
                                                      if m in p["extra_passes_per_retrieval"]})
                                           for m in ("onegen", "grit", "pipeline")},
        }
    return out


def point_key(p: dict) -> tuple:
    return p["model"], p["setting"], p["x"], json.dumps(p["workload"], sort_keys=True)


def _merger(entries: list[dict]):
    def merged(get, digits: int) -> dict:
        out = spread([v for e in entries for v in get(e)["per_repeat"]], digits)
        out["round_medians"] = [get(e)["median"] for e in entries]
        return out

    return merged


def pool_rounds(rounds: list[dict]) -> list[dict]:
    """The points of K rounds (the same grid, each round a fresh process) as one set of points: every
    spread over the K x repeats per-repeat values, each round's median kept as `round_medians`. The exact
    counts must agree between rounds (the same workload), else the rounds measured different things."""
    keyed = [{point_key(p): p for p in r["points"]} for r in rounds]
    pooled = []
    for key, first in keyed[0].items():
        entries = [k.get(key) for k in keyed]
        if any(e is None for e in entries):
            raise RuntimeError(f"point {key[:3]} is missing from a round: the rounds ran different grids")
        if any(e["calls"] != first["calls"] for e in entries):
            raise RuntimeError(f"point {key[:3]}: decoder-call counts differ between rounds (not the same workload)")
        merged = _merger(entries)
        p = copy.deepcopy(first)
        p["seconds"] = {m: merged(lambda e, m=m: e["seconds"][m], 7) for m in first["seconds"]}
        p["ratios"] = {k: merged(lambda e, k=k: e["ratios"][k], 4) for k in first["ratios"]}
        if "physical_limit" in first:
            p["physical_limit"] = {**merged(lambda e: e["physical_limit"], 4),
                                   **{sub: merged(lambda e, sub=sub: e["physical_limit"][sub], 7)
                                      for sub in ("decode_step_s", "search_s", "extra_s_per_retrieval")}}
        pooled.append(p)
    return pooled


def check_against(points: list[dict], reference: dict, ref_path: str) -> dict:
    """Each ratio's median of this run (and the physical limit's) against the reference's [min, max] at the
    same point: how many fall inside, and every comparison. A run sharing no point with the reference is an
    error, not an empty check."""
    ref = {point_key(p): p for p in reference["points"]}
    rows = []
    for p in points:
        r = ref.get(point_key(p))
        if r is None:
            continue
        pairs = [(k, v, r["ratios"].get(k)) for k, v in p["ratios"].items()]
        if "physical_limit" in p and "physical_limit" in r:
            pairs.append(("physical_limit", p["physical_limit"], r["physical_limit"]))
        for k, v, rv in pairs:
            if rv is None:
                continue
            rows.append({"model": p["model"], "setting": p["setting"], "x": p["x"], "ratio": k, "median": v["median"],
                         "reference": [rv["min"], rv["max"]], "inside": bool(rv["min"] <= v["median"] <= rv["max"])})
    if not rows:
        raise SystemExit(f"--check {ref_path}: no point of this run is in the reference (other grid or workload)")
    inside = sum(r["inside"] for r in rows)
    return {"reference": ref_path, "reference_rounds": reference["setup"].get("rounds", 1),
            "reference_repeats": reference["setup"]["repeats"], "compared": len(rows), "inside": inside,
            "ratios_inside": sum(r["inside"] for r in rows if r["ratio"] != "physical_limit"),
            "ratios_compared": sum(r["ratio"] != "physical_limit" for r in rows), "rows": rows}


def record_check(path: str | None, report: dict) -> None:
    """Append this run's comparison (with when, where and how it ran) to `path`'s `runs`, so the re-runs a
    reference was checked by stay on record beside it."""
    if not path:
        return
    from onegen_core.data.atomic_write import write_text_atomic

    p = Path(path)
    doc = json.loads(p.read_text()) if p.is_file() else {"runs": []}
    setup = report["setup"]
    doc["runs"].append({"finished": time.strftime("%Y-%m-%d %H:%M"), "cpu": setup["cpu"], "cores": setup["cores"],
                        "repeats": setup["repeats"], "rounds": setup.get("rounds", 1), **report["check"]})
    write_text_atomic(p, json.dumps(doc, indent=2) + "\n")
    print(f"recorded in {p} ({len(doc['runs'])} runs)")


def print_check(check: dict) -> None:
    for r in check["rows"]:
        lo, hi = r["reference"]
        where = f"{r['model']} ({r['setting']}) x={r['x']:<4} {r['ratio']:<16}"
        print(f"  {'inside ' if r['inside'] else 'OUTSIDE'} {where} "
              f"{r['median']:.3f} vs [{lo:.3f}, {hi:.3f}]")
    print(f"check against {check['reference']}: {check['ratios_inside']} of {check['ratios_compared']} ratio medians "
          f"inside the reference spread ({check['inside']} of {check['compared']} with the physical limit)", flush=True)


_PARENT_ONLY = ("--rounds", "--out", "--check", "--name", "--record-check")


def round_args(argv: list[str]) -> list[str]:
    """The command line of one round: the parent's, less the options the parent handles itself."""
    forward, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _PARENT_ONLY:
            skip = True  # its value is the next argument
        elif a.split("=", 1)[0] not in _PARENT_ONLY:
            forward.append(a)
    return forward


def run_rounds(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    """K rounds of the grid, each `python -m bench.efficiency` in a fresh process, one after another."""
    rounds = []
    with tempfile.TemporaryDirectory(prefix="onegen-eff-") as tmp:
        for k in range(args.rounds):
            print(f"\n#### round {k + 1} of {args.rounds} (a fresh process)", flush=True)
            out = Path(tmp) / f"round{k}"
            subprocess.run([sys.executable, "-m", "bench.efficiency", *round_args(argv), "--out", str(out)],
                           check=True, cwd=ROOT)
            rounds.append(json.loads((out / "efficiency.json").read_text()))
    return rounds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, reduced grid (about two minutes)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs of every method a point (default 3, quick 3)")
    ap.add_argument("--models", nargs="+", default=None, help="only these generators (tiny, smollm2-135m)")
    ap.add_argument("--out", default=str(ROOT / "metrics"), help="directory for efficiency.{json,csv,png}")
    ap.add_argument("--name", default="efficiency", help="file stem of the outputs (default efficiency)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the grid this many times, each in a fresh process, and pool the spreads (1-20)")
    ap.add_argument("--check", default=None, metavar="REF_JSON",
                    help="count this run's ratio medians inside the spreads of a reference efficiency JSON")
    ap.add_argument("--record-check", default=None, metavar="FILE",
                    help="with --check: append the comparison to FILE's runs (metrics/efficiency_quick_checks.json)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    repeats = args.repeats or 3
    if repeats < 2:
        raise SystemExit("--repeats must be at least 2: a spread needs two runs")
    if not 1 <= args.rounds <= 20:
        raise SystemExit(f"--rounds must be between 1 and 20, got {args.rounds}")
    if args.record_check and not args.check:
        raise SystemExit("--record-check needs --check REF_JSON: there is no comparison to record")
    reference = None
    if args.check:
        try:
            reference = json.loads(Path(args.check).read_text())
            reference["points"], reference["setup"]["repeats"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--check {args.check}: not a readable efficiency JSON ({e})") from None
    if args.rounds > 1:
        t0 = time.perf_counter()
        rounds = run_rounds(args, argv)
        points = pool_rounds(rounds)
        report = {"setup": {**rounds[0]["setup"], "rounds": args.rounds},
                  "summary": summarise(rounds[0]["setup"]["models"], points), "passes": PASSES, "points": points,
                  "seconds": round(time.perf_counter() - t0, 1)}
        print("\n#### pooled over the rounds")
        for e in points:
            print_point(e["model"], e)
        return finish(args, report, reference)
    torch.set_grad_enabled(False)
    from tasks.adapters.baselines import MiniLMEncoder

    t0 = time.perf_counter()
    params = load_params(args.params)
    minilm = MiniLMEncoder()
    gens = load_generators(params, args.quick)
    if args.models:
        gens = {k: v for k, v in gens.items() if k in args.models}
    models, points = {}, []
    for kind, (lm, tok) in gens.items():
        w = build_workload(lm, tok, minilm, CORPUS, n_docs=200 if args.quick else 500)
        models[kind] = describe(kind, lm, minilm)
        print(f"\n== {kind}: {models[kind]['parameters'] / 1e6:.1f}M parameters, {len(w.records)} documents of "
              f"{w.paste_len} pasted tokens; MiniLM = {models[kind]['retriever_share_of_generator']:.1%} of it ==")
        for setting, x, kw in grid(kind, args.quick):
            e = {"model": kind, **measure_point(w, setting, x, kw, repeats)}
            print_point(kind, e)
            points.append(e)
    report = {"setup": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": repeats,
                        "rounds": 1, "models": models, "goal_physical_limit": GOAL_PHYSICAL_LIMIT},
              "summary": summarise(models, points), "passes": PASSES, "points": points,
              "seconds": round(time.perf_counter() - t0, 1)}
    return finish(args, report, reference)


def finish(args: argparse.Namespace, report: dict, reference: dict | None) -> dict:
    """The report checked against `--check`'s reference (and recorded) when one was given, then written."""
    if reference is not None:
        report["check"] = check_against(report["points"], reference, args.check)
        print_check(report["check"])
        record_check(args.record_check, report)
    write_outputs(Path(args.out), report, args.name)
    return report


def write_outputs(out: Path, report: dict, name: str = "efficiency") -> None:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("json", "csv", "png")]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    with open(paths[1], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "setting", "x", "ratio", "median", "min", "max"])
        for p in report["points"]:
            for k, v in p["ratios"].items():
                w.writerow([p["model"], p["setting"], p["x"], k, v["median"], v["min"], v["max"]])
            if "physical_limit" in p:
                v = p["physical_limit"]
                w.writerow([p["model"], p["setting"], p["x"], "physical_limit", v["median"], v["min"], v["max"]])
    plot(report["points"], paths[2], report["setup"].get("rounds", 1))
    print("\n" + json.dumps(report["summary"], indent=2))
    print(f"wrote {', '.join(map(str, paths))} in {report['seconds']} s")


def plot(points: list[dict], path: Path, rounds: int = 1) -> None:
    """Every ratio of every point with its spread (min-max over repeats and rounds) as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"a": "(a) RAG: query tokens, 5 rounds", "b": "(b) RAG: rounds, 100-token queries",
              "c": "(c) EL: mentions, 1,000-token sentence"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, setting in zip(axes, "abc"):
        for mi, model in enumerate(sorted({p["model"] for p in points})):
            pts = sorted((p for p in points if p["setting"] == setting and p["model"] == model), key=lambda p: p["x"])
            for ki, key in enumerate(sorted({k for p in pts for k in p["ratios"]})):
                xs = [p["x"] for p in pts]
                med = np.array([p["ratios"][key]["median"] for p in pts])
                err = [med - [p["ratios"][key]["min"] for p in pts], [p["ratios"][key]["max"] for p in pts] - med]
                ax.errorbar(xs, med, yerr=err, marker="o", ls=("-", "--")[mi % 2], color=f"C{ki}",
                            capsize=3, label=f"{key} ({model})")
        ax.axhline(1.0, color="k", lw=0.6)
        ax.set(title=titles[setting], ylabel="time ratio (median, min-max)", xscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    where = "one process" if rounds == 1 else f"{rounds} rounds, each a fresh process"
    fig.suptitle(f"OneGen inference efficiency: every ratio, min-max over repeats (CPU, {where})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
