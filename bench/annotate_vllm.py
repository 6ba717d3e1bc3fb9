"""The paper's annotation path against a real vLLM server (Fig. 13 prompt, `annotate` with `backend: openai`).

What runs: `infra/vllm/serve.sh` serves SmolLM2-135M-Instruct with vLLM's OpenAI API on 127.0.0.1 (a small
stand-in for Qwen2-72B-Instruct on the same client path; `infra/vllm/README.md`), and this script drives
the project's own `annotate` stage (`python -m tasks.annotate`, the DVC stage's command) against it on the
first `--questions` training questions of `prepare.hotpotqa_train`:

1. **kill / restart**: the stage runs; once `--kill-after` answers are in its cache, the vLLM server's
   process group gets SIGKILL. The stage's requests then fail (connection refused, retried with backoff,
   then counted as errors and *not* cached); the server is started again and the stage re-run. Checked:
   every question has exactly one final answer in the cache (nothing lost), the re-run sent no request
   for a question the first run had settled (nothing paid twice), and the reports' counts add up.
2. **concurrency**: the same questions through the stage's runner (`annotate()`, the real HTTP backend,
   a fresh cache each) at each `--concurrency`, interleaved `--repeats` times: answers/s and its ratio
   to concurrency 1, per repeat, median [min, max].

Answers a 135M model writes often break the format: they are rejected with a counted reason, retried up to
`annotate.max_attempts` times, then kept as rejected (the stage falls back to the heuristic, or drops them
with `on_reject: drop`, as here). `--structured` sets `annotate.structured_output`: vLLM then keeps each
answer to the format (`answer_regex`), and what the model writes inside the tags is its own.
3. **explicit end to end** (`explicit_e2e`): the accepted decompositions through `label` (explicit query
   style), `train` (tiny profile, a few steps), `encode`, `evaluate`; what share survived each stage. Writes metrics/annotate_vllm.json with the counts, the rejection reasons, a few
real decompositions and rejected answers.

    infra/vllm/install.sh && infra/vllm/.venv/bin/python ... (see infra/vllm/README.md), then
    python -m bench.annotate_vllm [--questions 20] [--concurrency 1,4,8] [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "infra" / "vllm" / "serve.sh"


def serve(action: str, env: dict[str, str]) -> str:
    """`infra/vllm/serve.sh start|stop|status`; its output (a failed start raises with the log tail)."""
    done = subprocess.run(["bash", str(SERVE), action], env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 and action != "status":
        raise RuntimeError(f"serve.sh {action} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def server_pid(env: dict[str, str]) -> int:
    run_dir = Path(env.get("ONEGEN_VLLM_RUN_DIR", ROOT / "infra" / "vllm" / "run"))
    return int((run_dir / "vllm.pid").read_text().strip())


def write_subset(params, n: int, n_held_out: int, work: Path) -> list:
    """What `prepare` writes, for a small run: the first `n` training questions (`multihop_train.jsonl`),
    `n_held_out` of the held-out HotpotQA questions (the dev questions past `prepare.dev_train_count`),
    and no entity-linking data (an empty KB and split: this run is about the multi-hop main setting)."""
    from onegen_core.data import load_hotpotqa
    from onegen_core.data.multihop import record_to_dict

    records = load_hotpotqa(params.prepare.hotpotqa_train[0])[:n]
    start = params.prepare.dev_train_count
    held = load_hotpotqa(params.prepare.hotpotqa_dev)[start:start + n_held_out]
    prepared = work / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    for name, rows in (("multihop_train.jsonl", records), ("hotpotqa_heldout.jsonl", held)):
        (prepared / name).write_text("".join(json.dumps(record_to_dict(r), ensure_ascii=False) + "\n" for r in rows),
                                     encoding="utf-8")
    (prepared / "kb.jsonl").write_text("")
    (prepared / "el_split.json").write_text(json.dumps({"benchmarks": {"train": [], "eval": []}}))
    return records


def stage_args(work: Path, out: str, args) -> list[str]:
    """`python -m tasks.annotate` with the overrides that point it at the server and the work folder."""
    sets = {"prepare.out_dir": str(work / "prepared"), "annotate.out_dir": str(work / out),
            "annotate.backend": "openai", "annotate.base_url": f"http://127.0.0.1:{args.port}/v1",
            "annotate.model": args.model, "annotate.max_concurrency": args.kill_concurrency,
            "annotate.max_tokens": args.max_tokens, "annotate.max_attempts": args.max_attempts,
            "annotate.on_reject": "drop", "annotate.prompt": args.prompt,
            "annotate.structured_output": str(args.structured).lower()}
    return [sys.executable, "-m", "tasks.annotate"] + [a for k, v in sets.items() for a in ("-S", f"{k}={v}")]


def cache_lines(path: Path) -> list[dict]:
    """The cache's final results (`{"key": [id, hash], "result": {...}}` lines) as their result dicts, each
    with its key."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{**row["result"], "key": tuple(row["key"])} for row in rows]


def kill_and_restart(work: Path, args, env: dict[str, str]) -> dict:
    """Phase 1: the stage, the server killed mid-run, restarted, the stage again."""
    out = work / "annotate_kill"
    cache = out / "cache.jsonl"
    log1 = (work / "kill_run1.log").open("w")
    t0 = time.perf_counter()
    stage = subprocess.Popen(stage_args(work, "annotate_kill", args), cwd=ROOT, env=env, stdout=log1,
                             stderr=subprocess.STDOUT)
    killed_at = None
    while stage.poll() is None:
        if killed_at is None and len(cache_lines(cache)) >= args.kill_after:
            pid = server_pid(env)
            os.killpg(pid, signal.SIGKILL)  # the server and its engine core, mid-request
            killed_at = {"seconds": round(time.perf_counter() - t0, 1), "answers_cached": len(cache_lines(cache))}
            print(f"killed the vLLM server (pgid {pid}) with {killed_at['answers_cached']} answers cached", flush=True)
        time.sleep(0.5)
    log1.close()
    first = json.loads((out / "report.json").read_text())
    after_first = cache_lines(cache)
    print("restarting the vLLM server", flush=True)
    t_restart = time.perf_counter()
    serve("start", env)
    restart_s = time.perf_counter() - t_restart
    with (work / "kill_run2.log").open("w") as log2:
        second_rc = subprocess.run(stage_args(work, "annotate_kill", args), cwd=ROOT, env=env, stdout=log2,
                                   stderr=subprocess.STDOUT).returncode
    second = json.loads((out / "report.json").read_text())
    final = cache_lines(cache)
    keys = Counter(row["key"] for row in final)
    settled_first = first["accepted"] + first["rejected_total"]
    checks = {
        "server_killed_mid_run": killed_at is not None and first["errors"] > 0,
        "first_run_exit_code": stage.returncode,
        "second_run_exit_code": second_rc,
        "every_question_final_after_restart": len({row["example_id"] for row in final}) == args.questions
        and second["errors"] == 0,
        "one_cache_entry_per_question": len(final) == args.questions and max(keys.values(), default=0) == 1,
        "nothing_paid_twice": second["cached"] == settled_first == len(after_first),
        "second_run_sent_only_the_unsettled": second["requests"] >= args.questions - settled_first
        and second["accepted"] + second["rejected_total"] == args.questions - settled_first,
    }
    return {"killed": killed_at, "restart_seconds": round(restart_s, 1), "first_run": first, "second_run": second,
            "checks": checks, "cache": final}


def concurrency_phase(records: list, work: Path, args) -> dict:
    """Phase 2: answers/s of the stage's runner at each concurrency, interleaved, a fresh cache each, on
    the first `--concurrency-questions` questions with one attempt each (greedy answers: every level does
    the same work)."""
    from tasks.adapters.annotation_cache import AnnotationCache
    from tasks.adapters.annotation_runner import annotate
    from tasks.adapters.annotators import make_backend

    levels = [int(c) for c in args.concurrency.split(",")]
    runs: dict[int, list[dict]] = {c: [] for c in levels}
    for rep in range(args.repeats):
        for c in (levels if rep % 2 == 0 else levels[::-1]):  # alternate the order: drift hits every level
            backend = make_backend("openai", base_url=f"http://127.0.0.1:{args.port}/v1", model=args.model,
                                   max_tokens=args.max_tokens, temperature=0.0, max_concurrency=c)
            path = work / f"concurrency_{c}_{rep}.jsonl"
            path.unlink(missing_ok=True)
            with AnnotationCache(path) as cache:
                t0 = time.perf_counter()
                rep_ = annotate(records, backend, cache, 1, max_concurrency=c, prompt_style=args.prompt,
                                structured=args.structured)
                seconds = time.perf_counter() - t0
            row = {"seconds": round(seconds, 2), "answers_per_s": round(rep_.requests / seconds, 4),
                   "questions_per_s": round(len(records) / seconds, 4), "requests": rep_.requests,
                   "accepted": rep_.accepted, "rejected": rep_.rejected, "errors": rep_.errors,
                   "server": dict(backend.stats)}
            runs[c].append(row)
            print(f"repeat {rep + 1} concurrency {c}: {row['answers_per_s']:.3f} answers/s "
                  f"({rep_.requests} answers in {seconds:.1f} s; {row['server']})", flush=True)
    base = runs[levels[0]]
    ratios = {}
    for c in levels[1:]:
        per = [runs[c][i]["answers_per_s"] / base[i]["answers_per_s"] for i in range(args.repeats)]
        ratios[f"{c}/{levels[0]}"] = {"median": round(statistics.median(per), 3), "min": round(min(per), 3),
                                      "max": round(max(per), 3), "per_repeat": [round(x, 3) for x in per]}
    return {"levels": levels, "runs": {str(c): r for c, r in runs.items()}, "answers_per_s_ratio": ratios}


def run_stage(stage: str, sets: dict, work: Path, env: dict[str, str]) -> dict:
    """`python -m tasks.<stage>` with `-S` overrides; its exit code, seconds and log file."""
    cmd = [sys.executable, "-m", f"tasks.{stage}"] + [a for k, v in sets.items() for a in ("-S", f"{k}={v}")]
    t0 = time.perf_counter()
    with (work / f"e2e_{stage}.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    print(f"{stage}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
    if rc != 0:
        raise RuntimeError(f"{stage} failed (exit {rc}): see {work / f'e2e_{stage}.log'}")
    return {"exit": rc, "seconds": round(time.perf_counter() - t0, 1), "log": str(work / f"e2e_{stage}.log")}


def example_copies(decompositions: Path) -> dict[str, int]:
    """Accepted decompositions whose sub-questions or sub-answers are copied word for word from Fig. 13's
    one-shot example (a small model's favourite answer): the format held, the content is not the record's."""
    from onegen_core.prepare.decomposition import FIG13_PROMPT

    example = FIG13_PROMPT[FIG13_PROMPT.index("<SUB-QUESTION-1>"):FIG13_PROMPT.index("<FINAL-ANSWER>")]
    lines = {line.strip() for line in example.splitlines() if line.strip() and not line.startswith("<")}
    rows = [json.loads(line) for line in decompositions.read_text().splitlines() if line.strip()]
    copied = [r for r in rows if any((s.get("sub_question") or "").strip() in lines
                                     or (s.get("sub_answer") or "").strip() in lines for s in r["steps"])]
    steps = [s for r in rows for s in r["steps"]]
    return {"decompositions": len(rows), "with_a_step_copied_from_the_example": len(copied),
            "steps": len(steps), "steps_copied": sum((s.get("sub_question") or "").strip() in lines for s in steps)}


def explicit_e2e(work: Path, args, env: dict[str, str]) -> dict:
    """Phase 3: the paper's main setting on the server's decompositions: `label` with
    `reconstruct.query_style: explicit` → `train` (the tiny profile, `--e2e-steps` steps: the point is
    that every stage runs on real LLM output, not a trained model) → `encode` → `evaluate`."""
    common = {"prepare.out_dir": work / "prepared", "annotate.out_dir": work / "annotate_kill",
              "prepare.elevant": "[]", "reconstruct.query_style": "explicit", "profile": "tiny"}
    label = {**common, "label.out_dir": work / "label", "label.val_count_by_task": "{}", "label.val_fraction": 0.2}
    model = work / "model"
    train = {**common, "train.max_steps": args.e2e_steps, "train.output_dir": model,
             "train_data.train_file": work / "label" / "train.jsonl", "train_data.val_file": work / "label" / "val.jsonl",
             "train_data.init_dir": work / "init", "train_data.metrics_path": work / "train.json",
             "distributed.num_workers": 1,
             "distributed.storage_path": work / "ray", "mlflow.tracking_uri": work / "mlruns.db",  # a bare path: a sqlite store
             "mlflow.artifact_location": work / "mlartifacts"}
    encode = {**common, "encode.checkpoint": model, "encode.uri": work / "index",
              "encode.hotpotqa": f"[{work / 'prepared' / 'hotpotqa_heldout.jsonl'}]", "encode.wiki2": "[]",
              "encode.kb": "", "encode.kb_pages": "", "encode.report_path": work / "encode.json"}
    evaluate = {**common, "evaluate.checkpoint": model, "evaluate.index_uri": work / "index",
                "evaluate.hotpotqa": work / "prepared" / "hotpotqa_heldout.jsonl", "evaluate.wiki2": "",
                "evaluate.elevant": "[]", "evaluate.baselines": "[]", "evaluate.settings": "[distractor]",
                "evaluate.log_mlflow": "false", "evaluate.out_dir": work / "eval",
                "evaluate.metrics_path": work / "evaluate.json"}
    out = {"stages": {}}
    for stage, sets in (("label", label), ("train", train), ("encode", encode), ("evaluate", evaluate)):
        out["stages"][stage] = run_stage(stage, sets, work, env)
    annotate_report = json.loads((work / "annotate_kill" / "report.json").read_text())
    label_report = json.loads((work / "label" / "report.json").read_text())
    train_summary = json.loads((work / "train.json").read_text())
    evaluation = json.loads((work / "evaluate.json").read_text())["multihop"]
    out["survival"] = {
        "questions": args.questions,
        "annotate_accepted": annotate_report["outcome"].get("accepted", 0),
        "annotate_dropped": {k: v for k, v in annotate_report["outcome"].items() if k.startswith("dropped_")},
        "annotate_rejected_by_reason": annotate_report["rejected"],
        "label_examples": label_report.get("multihop_examples", 0),
        "label_train": label_report["train"], "label_val": label_report["val"],
        "label_skipped": label_report.get("skipped", {}), "label_skips": label_report.get("skips", [])[:10],
        "train_steps": train_summary.get("steps"),
        "explicit_sub_questions": sum(1 for line in (work / "annotate_kill" / "decompositions.jsonl").read_text()
                                      .splitlines() if line.strip() for s_ in json.loads(line)["steps"]
                                      if s_.get("sub_question")),
    }
    out["survival"]["copied_from_fig13_example"] = example_copies(work / "annotate_kill" / "decompositions.jsonl")
    out["evaluate"] = evaluation
    return out


def examples(cache: list[dict], n: int = 3) -> dict:
    """A few accepted decompositions and rejected answers, as the server wrote them."""
    accepted = [{"example_id": r["example_id"], "decomposition": r["decomposition"], "response": r.get("response"),
                 "attempts": r.get("attempts")}
                for r in cache if r.get("status") == "accepted"][:n]
    rejected = [{"example_id": r["example_id"], "reason": r.get("reason"), "detail": r.get("detail"),
                 "response": (r.get("response") or "")[:1200]} for r in cache if r.get("status") == "rejected"][:n]
    return {"accepted": accepted, "rejected": rejected}


def project_relative(text: str) -> str:
    """`text` with this checkout's absolute path taken off the paths it holds (logs, skips, the server's
    command line): a committed result names files relative to the project, not to one machine."""
    return text.replace(f"{ROOT}/", "")


def main(argv: list[str] | None = None) -> None:
    from onegen_core.config import load_params

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--concurrency-questions", type=int, default=8, help="questions of the concurrency phase")
    ap.add_argument("--kill-after", type=int, default=6, help="answers cached before the server is killed")
    ap.add_argument("--kill-concurrency", type=int, default=4, help="annotate.max_concurrency of phase 1")
    # a decomposition in the Fig. 13 format is ~150-250 tokens; a 135M model that misses the format writes
    # on to the limit (94 s for 1,024 tokens here), so the check caps answers lower than params' 1,024
    ap.add_argument("--max-tokens", type=int, default=384, help="annotate.max_tokens of the check")
    ap.add_argument("--max-attempts", type=int, default=2, help="annotate.max_attempts of the check")
    ap.add_argument("--prompt", default="fig13", choices=("fig13", "numbered"))
    ap.add_argument("--structured", action="store_true",
                    help="annotate.structured_output: the server keeps each answer to the format (a regex)")
    ap.add_argument("--model", default=os.environ.get("ONEGEN_VLLM_NAME", "SmolLM2-135M-Instruct"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("ONEGEN_VLLM_PORT", "8000")))
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "annotate_vllm"))
    ap.add_argument("--skip", default="", help="phases to skip: kill, concurrency, e2e")
    ap.add_argument("--e2e-steps", type=int, default=30, help="training steps of the explicit end-to-end run")
    ap.add_argument("--e2e-held-out", type=int, default=10, help="held-out questions the explicit run evaluates")
    ap.add_argument("--out", default=str(ROOT / "metrics" / "annotate_vllm.json"))
    args = ap.parse_args(argv)
    if args.questions < 1 or args.kill_after < 1 or args.repeats < 1:
        raise SystemExit("--questions, --kill-after and --repeats must be at least 1")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ONEGEN_VLLM_PORT": str(args.port), "HF_HUB_OFFLINE": "1"}
    params = load_params(str(ROOT / "params.yaml"))
    records = write_subset(params, args.questions, args.e2e_held_out, work)
    t0 = time.perf_counter()
    serve("start", env)
    result: dict = {"finished": None, "server": {"model": args.model, "start_seconds": round(time.perf_counter() - t0, 1),
                               "status": serve("status", env).strip().splitlines()[:6]},
                    "questions": args.questions, "prompt": args.prompt, "structured_output": args.structured, "max_tokens": args.max_tokens,
                    "max_attempts": args.max_attempts}
    try:
        if "kill" not in args.skip:
            result["kill_restart"] = kill_and_restart(work, args, env)
            result["examples"] = examples(result["kill_restart"]["cache"])
        if "concurrency" not in args.skip:
            result["concurrency"] = concurrency_phase(records[:args.concurrency_questions], work, args)
    finally:
        serve("stop", env)
    if "e2e" not in args.skip and "kill" not in args.skip:  # on phase 1's decompositions; no server needed
        result["explicit_e2e"] = explicit_e2e(work, args, env)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")
    if "kill_restart" in result:
        result["kill_restart"]["cache"] = len(result["kill_restart"]["cache"])  # the examples above show it
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(project_relative(json.dumps(result, indent=2, ensure_ascii=False)) + "\n")
    print(json.dumps({k: result.get("kill_restart", {}).get(k) for k in ("killed", "checks")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
