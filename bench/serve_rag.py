"""One model against two, serving: OneGen vs a MiniLM pipeline vs GRIT-style re-encoding, through the
batched engine a user serves (`tasks.serving.batching.BatchingEngine` over `ModelService.run_ask`).

What runs: the trained checkpoint (`--checkpoint`, default `evaluate.checkpoint`, SmolLM2-135M-Instruct
fine-tuned by `make run`; `--tiny` uses the ~100k-parameter test checkpoint of `tasks.serving.tiny`)
answers the same held-out multi-hop questions (`evaluate.hotpotqa` + `evaluate.wiki2`, a fixed sample of
`--questions`) with the evaluated defaults (greedy, `evaluate.max_new_tokens`, `evaluate.max_retrievals`,
`serve.top_k` hits a search). The three systems (`bench/rag_systems.py`): onegen (the [RQ] hidden state
is the query; one model, one table), pipeline (a MiniLM-L6 retriever, 22.7M parameters, encodes the
query text the evaluate stage gives it; generator + MiniLM + a MiniLM table), grit (the same LLM
re-encodes that query text in a second pass; one model, one table, two passes a retrieval). The
corpus is the checkpoint's own [RD] vectors of the encode stage's table replicated with perturbation
to ≥ `--units` rows (100k by default; how: `bench/rag_systems.py`), with the ANN index `onegen index
add` builds at that size.

How it is measured: for each batch size B (1, 4, 16), B client threads submit one question each to a
`BatchingEngine(max_batch_size=B)` and submit the next when it is answered (closed loop), until the
`--questions` questions are answered. Methods are interleaved (each repeat runs every batch size, and
for each batch size every method, in a rotated order), `--repeats` times, after one unmeasured warm-up
phase per method. Counts per phase:
- questions_per_s: questions answered / the phase's wall time;
- latency: per question, from submitting it to its answer (queueing for the batch included);
- generated / pasted tokens, retrievals, generator forward passes (decoder calls of the engine) per
  question: whether the methods did the same work;
- retriever_queries / retriever_calls / retriever_passes / retriever_tokens: the baselines' query
  encodings (onegen has none: its query vector is the [RQ] hidden state already computed).
Ratios OneGen/pipeline and OneGen/GRIT of questions/s are taken per repeat (phases adjacent in time)
and reported as median [min, max]. Memory: the resident set (VmRSS, and its peak VmHWM) of a fresh
process per method that loads only what the method needs and answers a few questions
(`--probe METHOD`), the bench process's own RSS, and the bytes of each component held (generator,
MiniLM, tables). Timings depend on the machine and on whatever else runs; a run prints its spread.
Writes metrics/serve_rag.json.

    python -m bench.serve_rag [--units 100000] [--batch-sizes 1,4,16] [--questions 16] [--repeats 3]
    python -m bench.serve_rag --tiny    # the test checkpoint, a small corpus: a check in a minute
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.serve_load import QUESTIONS, percentile, rss_mb

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("onegen", "pipeline", "grit")
TINY_QUESTIONS = QUESTIONS  # the tiny serving checkpoint's questions, as bench/serve_load.py asks them


def proc_status_mb(pid: int, key: str) -> float:
    """A memory line of /proc/PID/status (VmRSS, VmHWM, …) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {key} for pid {pid}")


# ------------------------------------------------------------------------------------------ set-up

def settings(args):
    """(params, source index (uri, table), questions) of the run: the tiny project or the real one."""
    from onegen_core.config import load_params

    if args.tiny:
        from tasks.serving.tiny import build_tiny_project

        paths = build_tiny_project(Path(args.work_dir) / "tiny")
        params = load_params(ROOT / "params.yaml", {"profile": "tiny", "evaluate.checkpoint": paths["checkpoint"],
                                                    "evaluate.max_new_tokens": 48, "evaluate.max_retrievals": 3})
        questions = [TINY_QUESTIONS[i % len(TINY_QUESTIONS)] for i in range(args.questions)]
        return params, (paths["index"], "units"), questions
    params = load_params(args.params, {"evaluate.checkpoint": args.checkpoint} if args.checkpoint else None)
    return params, (params.encode.uri, params.encode.table), held_out_questions(params, args.questions, args.seed)


def held_out_questions(params, n: int, seed: int) -> list[str]:
    """A fixed sample of `n` held-out questions (HotpotQA and 2Wiki files of `evaluate`)."""
    from onegen_core.data.multihop import load_2wiki, load_hotpotqa

    e = params.evaluate
    pool = [r.question for r in load_hotpotqa(ROOT / e.hotpotqa)] + [r.question for r in load_2wiki(ROOT / e.wiki2)]
    if len(pool) < n:
        raise ValueError(f"{n} questions asked, the held-out files hold {len(pool)}")
    return random.Random(seed).sample(pool, n)


def load_service(params, corpus_uri: str):
    from bench.rag_systems import ONEGEN_TABLE
    from tasks.serving.service import ModelService

    return ModelService(params, index_uri=corpus_uri, units_table=ONEGEN_TABLE, kb_table="no-entity-table")


def make_systems(service, params, corpus_uri: str, methods) -> dict:
    """The systems `methods` over one loaded service (see `bench/rag_systems.py`)."""
    from bench.rag_systems import MINILM_TABLE, BaselineService, GritEncoder, MiniLMBatch, RetrieverBridge
    from tasks.adapters.eval_systems import QueryText
    from tasks.adapters.lance_index import LanceIndex

    text = QueryText(service.tokenizer, params.reconstruct.query_style)
    systems: dict = {}
    for m in methods:
        if m == "onegen":
            systems[m] = service
        elif m == "pipeline":
            from tasks.adapters.baselines import MiniLMEncoder

            bridge = RetrieverBridge(m, text, MiniLMBatch(MiniLMEncoder()), LanceIndex(corpus_uri, MINILM_TABLE),
                                     service.checkpoint_id)
            systems[m] = BaselineService(service, bridge)
        else:
            bridge = RetrieverBridge(m, text, GritEncoder(service.model, service.tokenizer), service.units,
                                     service.checkpoint_id)
            systems[m] = BaselineService(service, bridge)
    return systems


# ------------------------------------------------------------------------------------------ one phase

def run_phase(system, inputs: list, batch: int, max_wait_ms: float) -> dict:
    """Answer `inputs` (AskInput) through a fresh engine of `max_batch_size=batch`, with `batch` client
    threads in a closed loop. Returns wall time, per-question latencies and counts, retriever counts."""
    from tasks.serving.batching import BatchingEngine, Job

    engine = BatchingEngine(system, max_batch_size=batch, max_wait_ms=max_wait_ms, max_queue=len(inputs) + batch)
    results: list = [None] * len(inputs)
    latency: list = [None] * len(inputs)
    errors: list = []
    lock = threading.Lock()
    todo = iter(range(len(inputs)))
    bridge = getattr(system, "bridge", None)
    before = bridge.counts() if bridge else {}

    def client() -> None:
        try:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                item = inputs[i]
                job = Job("ask", item, 1, item.options.batch_key(), time.monotonic() + 3600)
                t0 = time.perf_counter()
                results[i] = engine.submit(job).future.result()
                latency[i] = time.perf_counter() - t0
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(batch)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    status = engine.status()
    engine.close()
    if errors:
        raise errors[0]
    after = bridge.counts() if bridge else {}
    return phase_record(results, latency, wall, status, {k: after[k] - before[k] for k in after})


def phase_record(results: list[dict], latency: list[float], wall: float, status: dict, retriever: dict) -> dict:
    n = len(results)
    counts = {k: sum(r["counts"][k] for r in results) for k in ("generated_tokens", "pasted_tokens", "retrievals")}
    finish: dict[str, int] = {}
    for r in results:
        finish[r["finish_reason"]] = finish.get(r["finish_reason"], 0) + 1
    return {
        "questions": n, "seconds": round(wall, 4), "questions_per_s": round(n / wall, 4),
        "latency_ms": [round(1000 * x, 1) for x in latency],
        "latency_p50_ms": round(1000 * percentile(latency, 50), 1),
        "latency_p99_ms": round(1000 * percentile(latency, 99), 1),
        **counts,
        "generator_forward_passes": round(sum(r["batch"]["forward_passes"] / r["batch"]["rows"] for r in results), 2),
        "batches": status["batches"], "mean_batch_rows": status["mean_batch_rows"],
        "finish_reasons": finish, "answers": [r["answer"] for r in results],
        "retriever": retriever,
    }


# ------------------------------------------------------------------------------------------ the grid

def run_grid(systems: dict, inputs: list, batch_sizes: list[int], repeats: int, max_wait_ms: float) -> list[dict]:
    """Every (repeat, batch size, method) phase, methods interleaved in a rotated order."""
    methods = list(systems)
    for m in methods:  # warm-up: first calls allocate caches and pick kernels
        run_phase(systems[m], inputs[:min(4, len(inputs))], min(4, max(batch_sizes)), max_wait_ms)
    phases = []
    for r in range(repeats):
        for j, b in enumerate(batch_sizes):
            k = (r + j) % len(methods)
            for m in methods[k:] + methods[:k]:
                rec = run_phase(systems[m], inputs, b, max_wait_ms)
                phases.append({"repeat": r, "batch_size": b, "method": m, **rec})
                print(f"  repeat {r} batch {b:>2} {m:>8}: {rec['questions_per_s']:7.3f} q/s, "
                      f"p50 {rec['latency_p50_ms']:8.1f} ms, p99 {rec['latency_p99_ms']:8.1f} ms, "
                      f"{rec['generated_tokens']} generated, {rec['retrievals']} retrievals", flush=True)
    return phases


def spread(values: list[float], digits: int = 4) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "values": [round(v, digits) for v in values]}


def summarise(phases: list[dict], methods: list[str], batch_sizes: list[int]) -> tuple[dict, dict]:
    """Per (method, batch size): questions/s and latency with their spread over repeats, work per
    question; ratios OneGen/other per batch size, paired within each repeat."""
    points: dict = {}
    for m in methods:
        for b in batch_sizes:
            ph = [p for p in phases if p["method"] == m and p["batch_size"] == b]
            q = sum(p["questions"] for p in ph)
            pooled = [x for p in ph for x in p["latency_ms"]]
            per_q = {k: round(sum(p[k] for p in ph) / q, 3) for k in
                     ("generated_tokens", "pasted_tokens", "retrievals", "generator_forward_passes")}
            retr = {k: round(sum(p["retriever"].get(k, 0) for p in ph) / q, 3) for k in ph[0]["retriever"]}
            points.setdefault(m, {})[str(b)] = {
                "questions_per_s": spread([p["questions_per_s"] for p in ph]),
                "latency_p50_ms": spread([p["latency_p50_ms"] for p in ph], 1),
                "latency_p99_ms": spread([p["latency_p99_ms"] for p in ph], 1),
                "latency_pooled_p50_ms": percentile(pooled, 50), "latency_pooled_p99_ms": percentile(pooled, 99),
                "per_question": {**per_q, **retr}, "repeats": len(ph)}
    ratios: dict = {}
    for other in [m for m in methods if m != "onegen"] if "onegen" in methods else []:
        for b in batch_sizes:
            by_rep = {(p["repeat"], p["method"]): p["questions_per_s"] for p in phases if p["batch_size"] == b}
            reps = sorted({r for r, _ in by_rep})
            ratios.setdefault(f"onegen_over_{other}", {})[str(b)] = spread(
                [by_rep[(r, "onegen")] / by_rep[(r, other)] for r in reps])
    return points, ratios


# ------------------------------------------------------------------------------------------ memory

def probe(args) -> dict:
    """In a fresh process: load what `args.probe` holds, answer a few questions, read the resident set."""
    import torch

    import tasks.serving.service  # noqa: F401 - the serving stack's imports, before anything is loaded

    if args.threads:
        torch.set_num_threads(args.threads)
    rss_imports = rss_mb(os.getpid())
    params, _, questions = settings(args)
    service = load_service(params, str(Path(args.work_dir) / "corpus"))
    system = make_systems(service, params, str(Path(args.work_dir) / "corpus"), [args.probe])[args.probe]
    opts = service.ask_options()
    inputs = [service.ask_input(q, opts, limit=None) for q in questions[:4]]
    run_phase(system, inputs, len(inputs), args.max_wait_ms)
    return {"method": args.probe, "rss_mb_after_imports": rss_imports, "rss_mb": rss_mb(os.getpid()),
            "peak_rss_mb": proc_status_mb(os.getpid(), "VmHWM")}


def run_probes(argv: list[str], methods: list[str]) -> dict:
    """`probe` of each method in its own subprocess (the same arguments, plus --probe METHOD)."""
    out = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for m in methods:
        proc = subprocess.run([sys.executable, "-m", "bench.serve_rag", *argv, "--probe", m], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"memory probe {m} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        out[m] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {m}: RSS {out[m]['rss_mb']} MiB (peak {out[m]['peak_rss_mb']}, after imports "
              f"{out[m]['rss_mb_after_imports']})", flush=True)
    return out


def components(service, systems: dict, corpus: dict) -> dict:
    """Bytes each component holds in memory, and which components each method holds."""
    from bench.rag_systems import parameter_bytes

    comp = {"generator": parameter_bytes(service.model)}
    if "pipeline" in systems:
        comp["minilm"] = parameter_bytes(systems["pipeline"].bridge.encode.minilm.model)
    for name in ("onegen", "minilm"):
        t = corpus[name]
        comp[f"{name}_table"] = {"rows": t["rows"], "dim": t["dim"], "vector_bytes": t["rows"] * t["dim"] * 4,
                                 "disk_bytes": t["disk_bytes"], "index_type": t["index_type"]}
    holds = {"onegen": ["generator", "onegen_table"], "grit": ["generator", "onegen_table"],
             "pipeline": ["generator", "minilm", "minilm_table"]}
    return {"components": comp, "holds": {m: h for m, h in holds.items() if m in systems},
            "models_held": {"onegen": 1, "grit": 1, "pipeline": 2}, "tables_held": {"onegen": 1, "grit": 1, "pipeline": 1}}


# ------------------------------------------------------------------------------------------ main

def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="trained checkpoint (default: evaluate.checkpoint)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--tiny", action="store_true", help="the tiny test checkpoint of tasks.serving.tiny (a check)")
    ap.add_argument("--units", type=int, default=None, help="rows of the served tables (default 100000; tiny 2000)")
    ap.add_argument("--sigma", type=float, default=0.3, help="perturbation of the replicated vectors")
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--questions", type=int, default=16, help="questions per phase (the same in every phase)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="the engine's wait for a batch to fill")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-probes", action="store_true", help="skip the per-method memory subprocesses")
    ap.add_argument("--probe", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "serve_rag"))
    ap.add_argument("--out", default=str(ROOT / "metrics"))
    args = ap.parse_args(argv)
    args.units = args.units or (2000 if args.tiny else 100_000)
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args)))
        return {}
    import torch

    from bench.rag_systems import build_corpus
    from tasks.adapters.baselines import MiniLMEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    methods = args.methods.split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rss = {"start": rss_mb(os.getpid())}
    params, (src_uri, src_table), questions = settings(args)
    corpus_uri = str(Path(args.work_dir) / "corpus")
    from onegen_core.method.backbone import checkpoint_id

    ck = checkpoint_id(params.evaluate.checkpoint)
    t0 = time.perf_counter()
    corpus = build_corpus(str(src_uri), src_table, ck, MiniLMEncoder(), corpus_uri, args.units, args.sigma,
                          args.seed, params.encode.ann_min_rows)
    print(f"corpus: {corpus['onegen']['rows']} rows ({corpus['real_units']} real units x {corpus['copies']}), "
          f"{corpus['onegen']['index_type']} ({time.perf_counter() - t0:.0f} s)", flush=True)
    service = load_service(params, corpus_uri)
    systems = make_systems(service, params, corpus_uri, methods)
    rss["loaded"] = rss_mb(os.getpid())
    opts = service.ask_options()
    inputs = [service.ask_input(q, opts, limit=None) for q in questions]
    phases = run_grid(systems, inputs, batch_sizes, args.repeats, args.max_wait_ms)
    rss["after_grid"] = rss_mb(os.getpid())
    points, ratios = summarise(phases, methods, batch_sizes)
    memory = components(service, systems, corpus)
    memory["bench_process_rss_mb"] = rss
    memory["per_method_process"] = {} if args.no_probes else run_probes(
        [a for a in argv if a != "--no-probes"], methods)
    result = {
        "what": "questions/s, latency and memory of OneGen vs a MiniLM pipeline vs GRIT-style re-encoding, "
                "served by the batched engine (BatchingEngine over ModelService.run_ask)",
        "checkpoint": params.evaluate.checkpoint, "checkpoint_id": ck, "dtype": service.dtype,
        "generator_parameters": memory["components"]["generator"]["parameters"],
        "corpus": corpus,
        "settings": {"methods": methods, "batch_sizes": batch_sizes, "questions_per_phase": len(inputs),
                     "repeats": args.repeats, "max_new_tokens": opts.max_new_tokens,
                     "max_retrievals": opts.max_retrievals, "top_k": opts.top_k, "max_wait_ms": args.max_wait_ms,
                     "query_style": params.reconstruct.query_style, "torch_threads": torch.get_num_threads(),
                     "cpus": os.cpu_count(), "tiny": args.tiny},
        "ratios_questions_per_s": ratios, "points": points, "memory": memory, "phases": phases,
        "seconds": round(time.perf_counter() - t_all, 1),
        "note": "ratios are paired within each repeat (phases adjacent in time); absolute figures depend on the "
                "machine and its load",
    }
    write(result, Path(args.out))
    return result


def write(result: dict, out: Path) -> None:
    print("\nquestions/s ratios (median [min, max] over repeats):")
    for name, by_b in result["ratios_questions_per_s"].items():
        for b, s in by_b.items():
            print(f"  {name:>22} at batch {b:>2}: {s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]")
    mem = result["memory"]["per_method_process"]
    for m, p in mem.items():
        print(f"  resident memory, {m:>8} alone: {p['rss_mb']} MiB (peak {p['peak_rss_mb']})")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "serve_rag.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
