"""Encode and evaluate throughput: local (one process) against Ray Data on one node and on two nodes, one run.

What it measures, on the embedded default's backbone (SmolLM2-135M-Instruct with the OneGen tokens; its weights
untrained for the method, which does not change what a forward pass costs):
- encode: documents/s of the `encode` stage's path (`encode.executor` local / ray) over the paragraphs of the
  first `--questions-for-corpus` HotpotQA dev questions, sentence units, `encode.batch_size` documents a batch;
- evaluate: questions/s of OneGen's multi-hop generation (`evaluate.executor` local / ray; distractor setting,
  `--max-new-tokens`, baselines and entity linking off) on `--questions` held-out questions.
Modes, interleaved `--repeats` times: `local`; `ray-1-node` (a local Ray started by the stage, two replicas of
one CPU); `ray-2-nodes` (`infra/ray/local-cluster.sh`: two nodes of one CPU each on this machine, two replicas
of 0.75 CPU, one per node). Times are the stage's wall clock as a user waits for it (`python -m tasks.<stage>`: interpreter
start, model loading, Ray's start or join and its replicas' start included; the cluster's own start excluded).

On a 2-core machine the modes share the same two cores: the figures show what Ray's path costs against one
process, not how it scales with machines (two real nodes would double the cores; here they split them).

    python -m bench.ray_scaling [--repeats 2] [--out metrics]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("local", "ray-1-node", "ray-2-nodes")
CLUSTER_PORT = 28500


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--questions-for-corpus", type=int, default=12, help="HotpotQA dev questions whose paragraphs form the corpus")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", default=str(ROOT / "metrics"))
    return ap.parse_args(argv)


def cluster(command: str, work: Path) -> None:
    env = {**os.environ, "ONEGEN_RAY_PORT": str(CLUSTER_PORT), "ONEGEN_RAY_DIR": str(work / "cluster"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(ROOT / "infra" / "ray" / "local-cluster.sh"), command], env=env, check=True,
                   timeout=240, stdout=subprocess.DEVNULL)


def build_inputs(work: Path, n_corpus: int, n_questions: int) -> tuple[str, Path, Path]:
    """(checkpoint dir, corpus file, questions file): the backbone saved with the OneGen tokens, the corpus
    questions' and the evaluated questions' records as the prepare stage writes them."""
    from onegen_core.config import load_params
    from onegen_core.data import load_hotpotqa
    from onegen_core.data.multihop import record_to_dict
    from onegen_core.method.backbone import load_pretrained, save_checkpoint

    p = load_params(ROOT / "params.yaml")
    lm, tok, _ = load_pretrained(p.backbone.name, p.backbone)
    ckpt = save_checkpoint(lm, tok, work / "ckpt", {"backbone": p.backbone.name, "tokenizer": "pretrained"})
    recs = load_hotpotqa(ROOT.parent / "shared" / "data" / "hotpotqa" / "dev_distractor_sample.json")
    corpus, questions = work / "corpus.jsonl", work / "questions.jsonl"
    corpus.write_text("".join(json.dumps(record_to_dict(r)) + "\n" for r in recs[:max(n_corpus, n_questions)]))
    questions.write_text("".join(json.dumps(record_to_dict(r)) + "\n" for r in recs[:n_questions]))
    return str(ckpt), corpus, questions


def mode_settings(mode: str) -> dict:
    if mode == "ray-1-node":
        return {"distributed.ray_address": "", "ray_data.actors_min": 2, "ray_data.actors_max": 2,
                "ray_data.cpus_per_actor": 1.0}
    if mode == "ray-2-nodes":
        return {"distributed.ray_address": f"127.0.0.2:{CLUSTER_PORT}", "ray_data.actors_min": 2,
                "ray_data.actors_max": 2, "ray_data.cpus_per_actor": 0.75}
    return {}


def stage(name: str, settings: dict, cwd: Path) -> float:
    """Wall-clock seconds of `python -m tasks.<name>` with `settings` as -S overrides, run in `cwd` (its own
    runs/ folder) as a user runs the stage: interpreter start and model loading included."""
    argv = [sys.executable, "-m", f"tasks.{name}", "--params", str(ROOT / "params.yaml")]
    for k, v in settings.items():
        argv += ["-S", f"{k}={json.dumps(v)}"]
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"tasks.{name} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def time_encode(mode: str, ckpt: str, corpus: Path, work: Path, run: int) -> tuple[float, int]:
    """(seconds, documents) of one encode of the corpus in `mode`, into a fresh table."""
    out = work / f"idx-{mode}-{run}"
    seconds = stage("encode", {
        "encode.checkpoint": ckpt, "encode.uri": str(out), "encode.hotpotqa": [str(corpus)], "encode.wiki2": [],
        "encode.kb": "", "encode.report_path": str(out / "report.json"), "ray_data.commit_every": 100_000,
        "backbone.inference_dtype": "float32", "encode.executor": "local" if mode == "local" else "ray",
        **mode_settings(mode)}, work / f"encode-{mode}-{run}")
    return seconds, json.loads((out / "report.json").read_text())["documents"]


def time_evaluate(mode: str, ckpt: str, questions: Path, index: Path, work: Path, run: int, max_new: int) -> float:
    here = work / f"eval-{mode}-{run}"  # its own result cache (runs/evaluate): every piece is computed
    return stage("evaluate", {
        "evaluate.checkpoint": ckpt, "evaluate.index_uri": str(index), "evaluate.hotpotqa": str(questions),
        "evaluate.wiki2": "", "evaluate.elevant": [], "evaluate.settings": ["distractor"], "evaluate.baselines": [],
        "evaluate.max_new_tokens": max_new, "evaluate.log_mlflow": False, "backbone.inference_dtype": "float32",
        "evaluate.out_dir": str(here / "report"), "evaluate.metrics_path": str(here / "evaluate.json"),
        "evaluate.executor": "local" if mode == "local" else "ray", **mode_settings(mode)}, here)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    work = Path(tempfile.mkdtemp(prefix="onegen-ray-scaling-"))
    ckpt, corpus, questions = build_inputs(work, args.questions_for_corpus, args.questions)
    cluster("up", work)
    times: dict[str, dict[str, list[float]]] = {m: {"encode": [], "evaluate": []} for m in MODES}
    docs = 0
    try:
        for run in range(args.repeats):
            for mode in MODES:  # interleaved: the machine's drift falls on every mode alike
                seconds, docs = time_encode(mode, ckpt, corpus, work, run)
                times[mode]["encode"].append(seconds)
                ev = time_evaluate(mode, ckpt, questions, work / f"idx-local-{run}", work, run, args.max_new_tokens)
                times[mode]["evaluate"].append(ev)
                print(f"run {run} {mode:>11}: encode {docs / seconds:6.1f} docs/s, evaluate {args.questions / ev:5.2f} "
                      "questions/s", flush=True)
    finally:
        cluster("down", work)
    out = {"backbone": "params backbone.name (SmolLM2-135M-Instruct)", "documents": docs, "questions": args.questions,
           "max_new_tokens": args.max_new_tokens, "cpu_count": os.cpu_count(), "repeats": args.repeats, "modes": {}}
    for mode in MODES:
        enc = summary([docs / s for s in times[mode]["encode"]])
        ev = summary([args.questions / s for s in times[mode]["evaluate"]])
        out["modes"][mode] = {"encode_docs_per_s": enc, "evaluate_questions_per_s": ev}
    base = out["modes"]["local"]
    for mode in MODES[1:]:
        m = out["modes"][mode]
        m["encode_ratio_over_local"] = m["encode_docs_per_s"]["median"] / base["encode_docs_per_s"]["median"]
        m["evaluate_ratio_over_local"] = (m["evaluate_questions_per_s"]["median"]
                                          / base["evaluate_questions_per_s"]["median"])
        print(f"{mode:>11} over local (medians of {args.repeats}): encode {m['encode_ratio_over_local']:.2f}x "
              f"(runs {', '.join(f'{v:.1f}' for v in m['encode_docs_per_s']['runs'])} docs/s), evaluate "
              f"{m['evaluate_ratio_over_local']:.2f}x (runs {', '.join(f'{v:.2f}' for v in m['evaluate_questions_per_s']['runs'])} q/s)")
    from onegen_core.data.atomic_write import write_text_atomic

    write_text_atomic(Path(args.out) / "ray_scaling.json", json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
