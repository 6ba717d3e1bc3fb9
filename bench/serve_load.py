"""Load on `onegen api`: N concurrent clients on loopback for a bounded time, batched vs one at a time.

The server is the real command (`python -m flows.cli api`, a subprocess) over the tiny trained checkpoint
of `tasks.serving.tiny` and its LanceDB index. It runs twice with the same clients and questions:
- one at a time: `serve.max_batch_size=1` (each request is its own batch);
- batched: `serve.max_batch_size=N` and `serve.max_wait_ms` (dynamic batching into the one-pass engine).
Each client posts greedy `/v1/ask` requests back to back for `--seconds`; after a short warm-up the bench
counts requests/s, latency p50/p99, failed requests (anything but 200; must be 0 while the clients stay
below `serve.max_queue`), the mean batch size the engine reports, and the server's resident memory
(VmRSS) before and after the load. The batched/one-at-a-time requests/s ratio comes from one run on
whatever else the machine is doing. Writes metrics/serve_load.json.

    python -m bench.serve_load [--clients 8] [--seconds 10] [--threads 1] [--out metrics]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Which magazine was started first, Arthur's Magazine or First for Women?",
    "Were Scott Derrickson and Ed Wood of the same nationality?",
    "Who founded Arthur's Magazine?",
    "Where does Scott Derrickson live?",
    "When was First for Women started?",
    "What kind of films did Ed Wood make?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


class Server:
    """`onegen api` in a subprocess on a free loopback port, with serve.* overrides."""

    def __init__(self, paths: dict[str, str], threads: int, **serve) -> None:
        self.port = _free_port()
        sets = [f"serve.{k}={v}" for k, v in {"threads": threads, **serve}.items()]
        cmd = [sys.executable, "-m", "flows.cli", "api", "--project-dir", str(ROOT), "--profile", "tiny",
               "--checkpoint", paths["checkpoint"], "--index", paths["index"], "--port", str(self.port)]
        for s in sets:
            cmd += ["-S", s]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("ONEGEN_API_KEY", None)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - the server's output, open while it runs
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited: {self.log.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/v1/health", timeout=10).json()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def _clients(url: str, n: int, seconds: float, max_tokens: int, warmup: float) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    start = time.monotonic()
    measure_from, end = start + warmup, start + warmup + seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        k = i
        while time.monotonic() < end:
            q = QUESTIONS[k % len(QUESTIONS)]
            k += 1
            t0 = time.monotonic()
            try:
                r = await http.post(f"{url}/v1/ask", json={"question": q, "max_tokens": max_tokens})
                status = str(r.status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            t1 = time.monotonic()
            if t0 >= measure_from and t1 <= end:
                latencies.append(t1 - t0)
                statuses[status] = statuses.get(status, 0) + 1

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as http:
        await asyncio.gather(*(client(i, http) for i in range(n)))
    ok = statuses.get("200", 0)
    return {"requests": sum(statuses.values()), "ok": ok, "failed": sum(statuses.values()) - ok,
            "statuses": statuses, "requests_per_s": round(ok / seconds, 2),
            "latency_p50_ms": round(1000 * percentile(latencies, 50), 1) if latencies else None,
            "latency_p99_ms": round(1000 * percentile(latencies, 99), 1) if latencies else None,
            "latency_mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else None}


def run_phase(paths: dict[str, str], name: str, clients: int, seconds: float, warmup: float, max_tokens: int,
              threads: int, **serve) -> dict:
    server = Server(paths, threads, **serve)
    try:
        server.wait_ready()
        rss_before = rss_mb(server.proc.pid)
        load = asyncio.run(_clients(server.url, clients, seconds, max_tokens, warmup))
        engine = server.health()["engine"]
        rss_after = rss_mb(server.proc.pid)
    finally:
        server.stop()
    out = {"mode": name, "serve": serve, **load, "mean_batch_rows": engine["mean_batch_rows"],
           "engine_rejected": engine["rejected"], "rss_mb_before": rss_before, "rss_mb_after": rss_after}
    print(f"{name}: {out['requests_per_s']} req/s, p50 {out['latency_p50_ms']} ms, p99 {out['latency_p99_ms']} ms, "
          f"failed {out['failed']}, mean batch {out['mean_batch_rows']}, RSS {rss_before} -> {rss_after} MiB",
          flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (below serve.max_queue)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured time per phase")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each phase")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    ap.add_argument("--max-wait-ms", type=float, default=10.0, help="serve.max_wait_ms of the batched phase")
    ap.add_argument("--threads", type=int, default=1, help="serve.threads (torch threads of the server)")
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "serve_load"), help="where the tiny project is built")
    ap.add_argument("--out", default=str(ROOT / "metrics"))
    args = ap.parse_args(argv)

    from tasks.serving.tiny import build_tiny_project

    t0 = time.perf_counter()
    paths = build_tiny_project(Path(args.work_dir) / "tiny")
    common = {"clients": args.clients, "seconds": args.seconds, "warmup": args.warmup,
              "max_tokens": args.max_tokens, "threads": args.threads}
    single = run_phase(paths, "one_at_a_time", max_batch_size=1, max_wait_ms=0.0, max_queue=64, **common)
    batched = run_phase(paths, "batched", max_batch_size=args.clients, max_wait_ms=args.max_wait_ms, max_queue=64,
                        **common)
    result = {
        "what": "onegen api under N concurrent loopback clients: dynamic batching vs one request per batch",
        "checkpoint": "tasks.serving.tiny (the tiny trained test checkpoint)",
        "clients": args.clients, "seconds_per_phase": args.seconds, "max_tokens": args.max_tokens,
        "threads": args.threads, "cpus": os.cpu_count(),
        "one_at_a_time": single, "batched": batched,
        "requests_per_s_ratio_batched_over_single": (round(batched["requests_per_s"] / single["requests_per_s"], 2)
                                                     if single["requests_per_s"] else None),
        "failed_requests": single["failed"] + batched["failed"],
        "seconds": round(time.perf_counter() - t0, 1),
        "note": "one run, on a machine possibly busy with other jobs; ratios, not absolute figures, carry over",
    }
    out = Path(args.out) / "serve_load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ratio batched/one-at-a-time: {result['requests_per_s_ratio_batched_over_single']}; "
          f"failed {result['failed_requests']}; wrote {out}")
    return result


if __name__ == "__main__":
    main()
