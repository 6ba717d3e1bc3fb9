"""ANN at scale: LanceDB's vector indexes over a large table of unit vectors at the default backbone's
hidden size, against exact search, a NumPy scan and faiss, all in one run.

The table (`--rows`, default 1,000,000) and the queries (`--queries`, default 1,000) are perturbed copies
of seed vectors (bench/ann_data.py): by default the real [RD] vectors the encode stage stored
(`encode.uri`/`encode.table` of params.yaml: the trained SmolLM2-135M's 576-d unit vectors of the
corpus), or with `--source clustered` a synthetic clustered set (a Gaussian around a shared mean direction,
power-law spectrum). Each row is normalise(seed + sigma * noise) with noise drawn from the seeds' own
covariance; the JSON's `data` block says how hard that is (relative contrast, neighbour cosines, and the
share of a query's true neighbours that are copies of its own seed). Queries are fresh copies, not rows.
Ground truth: the exact cosine top-10 by chunked NumPy matrix products.

Grid (bench/ann_arms.py): LanceDB IVF_PQ with 36/72 sub-vectors x 256/1,024 partitions, each searched at
nprobes 10/20/50 x refine factor none/10/30; IVF_RQ (1 bit a dimension) at the same partitions, nprobes
and refine factors; IVF_HNSW_SQ (4 partitions, m 20, ef_construction 300, every partition probed) at ef
20/50/100/200 x refine none/10. References: LanceDB exact (flat scan), a NumPy brute-force scan, faiss
HNSW32 (efSearch 16..256) and IVF1024,Flat (nprobe 10/20/50) when faiss is installed (skipped otherwise).

Measured per search point: recall@1 (the top hit is the true nearest row) and recall@10 (share of the
true top-10 among the 10 returned), over all queries; single-query latency (one query at a time, wall
clock around the user-facing call: LanceDB's Python query builder to an Arrow table of row ids, faiss's
`search` of one row, NumPy's product and partial sort), p50 and p99 over every timed query, and the p50
of each repeat (median, min, max printed). Each index's build time (one build each: wall clock of the
index creation, training included) and size on disk. Methods are interleaved: the queries run in blocks,
and every point runs each block in turn (the order rotating per block) before the next block, `--repeats`
times; each point first answers `--warmup` untimed queries (loading its index). The exhaustive references
(LanceDB exact, NumPy) run only the first `--slow-queries` queries. Goal: p50 <= 10 ms at recall@10 >= 0.95
for a LanceDB point; the JSON's `goal` names the best point and, if unmet, what limits it.

Writes metrics/index_scale.json (every point) and metrics/index_scale.png (recall@10 against p50). The
table lives in a temporary directory (under `--workdir`), deleted at the end unless `--keep`.

    python -m bench.index_scale                      # the full grid (1M rows: about an hour on 2 cores)
    python -m bench.index_scale --rows 20000 --queries 200 --source clustered   # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.ann_arms import Arm, Grid, Point, faiss_arms, lance_arms, numpy_arm, write_base_table
from bench.ann_data import Perturber, clustered_seeds, difficulty, exact_topk, seeds_from_table
from onegen_core.config import load_params

ROOT = Path(__file__).resolve().parents[1]
GOAL_P50_MS, GOAL_RECALL_AT_10 = 10.0, 0.95


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--rows", type=int, default=1_000_000, help="rows of the table")
    a("--queries", type=int, default=1000, help="queries (fresh perturbed copies, not rows)")
    a("--source", choices=("index", "clustered"), default="index",
      help="seeds: the encode stage's [RD] vectors (index) or a synthetic clustered set")
    a("--params", default=str(ROOT / "params.yaml"), help="where encode.uri / encode.table are read")
    a("--seed-table", default=None, help="URI:TABLE of the seed vectors (default encode.uri:encode.table)")
    a("--seeds", type=int, default=4000, help="--source clustered: how many seeds")
    a("--dim", type=int, default=576, help="--source clustered: dimension (the default backbone's hidden size)")
    a("--spread", type=float, default=1.0, help="noise scale: copies of one seed lie this many seed-to-nearest-seed distances apart")
    a("--repeats", type=int, default=3, help="timed passes over the queries")
    a("--block", type=int, default=50, help="queries each point answers before the next point's turn")
    a("--slow-queries", type=int, default=100, help="queries the exhaustive references (LanceDB exact, NumPy) answer")
    a("--warmup", type=int, default=5, help="untimed queries per point first")
    g = Grid()
    a("--pq-sub-vectors", type=int, nargs="+", default=list(g.pq_sub_vectors))
    a("--partitions", type=int, nargs="+", default=list(g.partitions), help="IVF partitions of IVF_PQ and IVF_RQ")
    a("--nprobes", type=int, nargs="+", default=list(g.nprobes), help="IVF_PQ, IVF_RQ and faiss IVF probes")
    a("--refine", type=int, nargs="+", default=list(g.refine), help="refine factors (0 = none)")
    a("--hnsw-partitions", type=int, default=g.hnsw_partitions)
    a("--hnsw-ef", type=int, nargs="+", default=list(g.hnsw_ef))
    a("--faiss-ef", type=int, nargs="+", default=list(g.faiss_ef))
    a("--faiss-nlist", type=int, default=g.faiss_nlist)
    a("--families", nargs="+", default=list(g.families), choices=list(g.families))
    a("--workdir", default=None, help="parent of the temporary table directory (default: the system's)")
    a("--keep", action="store_true", help="keep the table directory (its path is printed)")
    a("--out", default=str(ROOT / "metrics"), help="directory for index_scale.{json,png}")
    a("--seed", type=int, default=0)
    return ap.parse_args(argv)


def grid_of(args: argparse.Namespace) -> Grid:
    return Grid(pq_sub_vectors=tuple(args.pq_sub_vectors), partitions=tuple(args.partitions),
                nprobes=tuple(args.nprobes), refine=tuple(args.refine), hnsw_partitions=args.hnsw_partitions,
                hnsw_ef=tuple(args.hnsw_ef), faiss_ef=tuple(args.faiss_ef), faiss_nlist=args.faiss_nlist,
                families=tuple(args.families))


def make_data(args: argparse.Namespace) -> dict:
    """Seeds → rows, queries, exact top-10, and the difficulty of the result."""
    rng = np.random.default_rng(args.seed)
    if args.source == "index":
        p = load_params(args.params)
        uri, table = (args.seed_table.rsplit(":", 1) if args.seed_table else (p.encode.uri, p.encode.table))
        seeds, origin = seeds_from_table(uri, table), f"{uri}/{table}"
    else:
        seeds, origin = clustered_seeds(args.seeds, args.dim, rng), f"clustered ({args.seeds} seeds)"
    pert = Perturber(seeds, args.spread)
    rows, seed_of_rows = pert.sample(args.rows, rng)  # (rows, dim)
    queries, seed_of_queries = pert.sample(args.queries, rng)  # (queries, dim)
    t0 = time.perf_counter()
    gt_ids, gt_cos = exact_topk(rows, queries, 10)
    gt_s = time.perf_counter() - t0
    hard = difficulty(rows, queries, gt_cos, gt_ids, seed_of_rows, seed_of_queries, rng)
    meta = {"seed_vectors": origin, "seeds": len(seeds), "dim": seeds.shape[1], "spread": args.spread,
            "sigma": round(float(pert.sigma), 4), "seed_nearest_distance_median": round(pert.nn_distance, 4),
            "ground_truth_s": round(gt_s, 1), **hard}
    return {"rows": rows, "queries": queries, "gt": gt_ids, "meta": meta}


def measure(points: list[Point], queries: np.ndarray, args: argparse.Namespace) -> dict[str, dict]:
    """Interleaved single-query timing (see the module docstring): per point, the ids the first repeat
    returned and every latency (seconds) by repeat."""
    for p in points:
        for q in queries[:args.warmup]:
            p.run(q)
    out = {p.name: {"ids": {}, "lat": [[] for _ in range(args.repeats)]} for p in points}
    blocks = [range(i, min(i + args.block, len(queries))) for i in range(0, len(queries), args.block)]
    turn = 0
    from tqdm import tqdm

    bar = tqdm(total=args.repeats * len(blocks), desc="timed query blocks", unit="block")
    for r in range(args.repeats):
        for blk in blocks:
            bar.update()
            turn += 1
            for p in points[turn % len(points):] + points[:turn % len(points)]:
                for i in blk:
                    if p.slow and i >= args.slow_queries:
                        break
                    t0 = time.perf_counter()
                    got = p.run(queries[i])
                    out[p.name]["lat"][r].append(time.perf_counter() - t0)
                    if r == 0:
                        out[p.name]["ids"][i] = np.asarray(got)
    bar.close()
    return out


def summarise(arm: Arm, point: Point, timed: dict, gt: np.ndarray) -> dict:
    """One point's JSON entry: recall, latency percentiles with their spread over repeats, build cost."""
    ids = timed["ids"]
    r1 = np.mean([len(v) > 0 and v[0] == gt[i, 0] for i, v in ids.items()])
    r10 = np.mean([len(set(v[:10].tolist()) & set(gt[i].tolist())) / 10 for i, v in ids.items()])
    ms = [1000 * np.asarray(lat) for lat in timed["lat"]]
    p50s = [float(np.percentile(m, 50)) for m in ms]
    every = np.concatenate(ms)
    return {"name": point.name, "arm": arm.name, "family": arm.family, "index_type": arm.index_type,
            "build": arm.build, "search": point.search, "queries": len(ids),
            "recall_at_1": round(float(r1), 4), "recall_at_10": round(float(r10), 4),
            "p50_ms": round(float(np.percentile(every, 50)), 3), "p99_ms": round(float(np.percentile(every, 99)), 3),
            "p50_ms_per_repeat": [round(v, 3) for v in p50s],
            "p50_ms_min": round(min(p50s), 3), "p50_ms_max": round(max(p50s), 3),
            "p99_ms_per_repeat": [round(float(np.percentile(m, 99)), 3) for m in ms],
            "build_s": round(arm.build_s, 2), "index_bytes": arm.index_bytes}


def goal(points: list[dict]) -> dict:
    """Whether a LanceDB index point reaches p50 <= 10 ms at recall@10 >= 0.95; the best point either way,
    and what limits it when unmet (the fastest accurate point, the most accurate fast one, and the
    references that show whether the data or LanceDB is the limit)."""
    lance = [p for p in points if p["family"] == "lancedb" and p["index_type"] != "flat"]
    accurate = sorted((p for p in lance if p["recall_at_10"] >= GOAL_RECALL_AT_10), key=lambda p: p["p50_ms"])
    fast = sorted((p for p in lance if p["p50_ms"] <= GOAL_P50_MS), key=lambda p: -p["recall_at_10"])
    others = [p for p in points if p["family"] == "faiss"
              and p["recall_at_10"] >= GOAL_RECALL_AT_10 and p["p50_ms"] <= GOAL_P50_MS]
    out = {"target": {"p50_ms": GOAL_P50_MS, "recall_at_10": GOAL_RECALL_AT_10},
           "met": bool(accurate and accurate[0]["p50_ms"] <= GOAL_P50_MS),
           "fastest_accurate_lancedb": accurate[0]["name"] if accurate else None,
           "most_accurate_fast_lancedb": fast[0]["name"] if fast else None,
           "lancedb_fastest_p50_ms": min((p["p50_ms"] for p in lance), default=None),
           "faiss_points_meeting_goal": [p["name"] for p in others]}
    if out["met"]:
        best = accurate[0]
        out["limits"] = "met"
    elif accurate:
        best = accurate[0]
        out["limits"] = (f"latency: recall@10 >= {GOAL_RECALL_AT_10} needs p50 {best['p50_ms']} ms ({best['name']}); "
                         f"the fastest LanceDB point of any recall takes {out['lancedb_fastest_p50_ms']} ms")
    else:
        best = max(lance, key=lambda p: p["recall_at_10"], default=None)
        out["limits"] = (f"recall: no LanceDB point reaches recall@10 {GOAL_RECALL_AT_10}; the best is "
                         f"{best['name']} at {best['recall_at_10']} (p50 {best['p50_ms']} ms)" if best else "no LanceDB point")
    out["best"] = best
    return out


def table_text(points: list[dict]) -> str:
    """The printed table: one line a point, grouped by index, with p50's spread over repeats."""
    head = f"{'point':<58} {'R@1':>6} {'R@10':>6} {'p50 ms [min-max]':>22} {'p99 ms':>8} {'build s':>8} {'MB':>8}"
    lines = [head, "-" * len(head)]
    for p in points:
        spread = f"{p['p50_ms']:.2f} [{p['p50_ms_min']:.2f}-{p['p50_ms_max']:.2f}]"
        lines.append(f"{p['name']:<58} {p['recall_at_1']:>6.3f} {p['recall_at_10']:>6.3f} {spread:>22} "
                     f"{p['p99_ms']:>8.2f} {p['build_s']:>8.1f} {p['index_bytes'] / 2**20:>8.1f}")
    return "\n".join(lines)


def plot(points: list[dict], path: Path, rows: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for kind in sorted({(p["family"], p["index_type"]) for p in points}):
        sel = [p for p in points if (p["family"], p["index_type"]) == kind]
        ax.scatter([p["recall_at_10"] for p in sel], [p["p50_ms"] for p in sel], label=" ".join(kind), s=18)
        for p in sel:  # the spread of p50 over repeats
            ax.plot([p["recall_at_10"]] * 2, [p["p50_ms_min"], p["p50_ms_max"]], lw=0.8, color="grey")
    ax.axhline(GOAL_P50_MS, ls=":", color="k")
    ax.axvline(GOAL_RECALL_AT_10, ls=":", color="k")
    ax.set(yscale="log", xlabel="recall@10", ylabel="single-query p50 (ms)",
           title=f"ANN at {rows:,} rows: every point (goal: lower right of the dotted lines)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_arms(data: dict, grid: Grid, workdir: Path) -> tuple[list[Arm], int]:
    """Every index of the grid, built over the same rows; also the base table's size on disk."""
    import lancedb

    rows, arms, table_bytes = data["rows"], [], 0
    if "lancedb" in grid.families:
        db = lancedb.connect(str(workdir / "db"))
        base = write_base_table(db, rows)
        table_bytes = sum(f.stat().st_size for f in (workdir / "db" / "base.lance").rglob("*") if f.is_file())
        arms += lance_arms(db, base, grid, len(rows))
    if "numpy" in grid.families:
        arms.append(numpy_arm(rows, grid.k))
    if "faiss" in grid.families:
        arms += faiss_arms(rows, grid, workdir)
    return arms, table_bytes


def environment(args: argparse.Namespace) -> dict:
    import lance
    import lancedb

    try:
        import faiss
        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
            "lancedb": lancedb.__version__, "pylance": lance.__version__, "faiss": faiss_version,
            "numpy": np.__version__, "rows": args.rows, "queries": args.queries, "repeats": args.repeats,
            "block": args.block, "slow_queries": args.slow_queries, "warmup": args.warmup, "k": 10}


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    grid = grid_of(args)
    setup = environment(args)
    data = make_data(args)
    t_data = time.perf_counter()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="index_scale_", dir=args.workdir))
    try:
        arms, table_bytes = build_arms(data, grid, workdir)
        t_build = time.perf_counter()
        points = [p for a in arms for p in a.points]
        timed = measure(points, data["queries"], args)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    entries = [summarise(a, p, timed[p.name], data["gt"]) for a in arms for p in a.points]
    t_end = time.perf_counter()
    if "faiss" in grid.families and setup["faiss"] is None:
        print("faiss is not installed: its points are skipped (pip install faiss-cpu)")
    return {"setup": setup, "data": data["meta"], "table_bytes": table_bytes,
            "arms": [{k: getattr(a, k) for k in ("name", "family", "index_type", "build", "build_s", "index_bytes")}
                     for a in arms],
            "points": entries, "goal": goal(entries),
            "seconds": {"data": round(t_data - t0, 1), "build": round(t_build - t_data, 1),
                        "search": round(t_end - t_build, 1), "total": round(t_end - t0, 1)}}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = run(args)
    print(table_text(report["points"]))
    print(f"goal (p50 <= {GOAL_P50_MS} ms at recall@10 >= {GOAL_RECALL_AT_10}): {report['goal']['limits']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "index_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report["points"], out / "index_scale.png", args.rows)
    print(f"wrote {out / 'index_scale.json'}, {out / 'index_scale.png'}; seconds: {report['seconds']}")
    return report


if __name__ == "__main__":
    main()
