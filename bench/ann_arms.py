"""The indexes `bench.index_scale` compares, each as search points: one function per point that takes one
query (dim,) and returns the row ids of its top k, as a user's single query would run.

- LanceDB: one table of the rows (`row`, `vector`), and for each index built a shallow clone of it (Lance
  shares the data files, so every index re-ranks from the same files and the disk holds the vectors once)
  with that index; exact search is the base table's flat scan (`bypass_vector_index`).
- NumPy: a brute-force scan of the in-memory rows (one matrix-vector product and a partial sort).
- faiss (optional: skipped, and said so, when `faiss` is not installed): HNSW32 and IVF<n>,Flat over inner
  product (= cosine on unit rows).
Distances are cosine throughout; build time is the wall time of the index build (training included).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

Search = Callable[[np.ndarray], np.ndarray]  # query (dim,) -> row ids (k,)


@dataclass
class Point:
    """One search configuration of one built index (`arm`)."""

    arm: str  # the built index, e.g. "lancedb IVF_PQ p256 s36"
    family: str  # lancedb | faiss | numpy
    search: dict  # search-time settings (nprobes, refine_factor, ef, ...); {} for exact scans
    run: Search
    slow: bool = False  # an exhaustive reference: timed on the first --slow-queries queries only

    @property
    def name(self) -> str:
        return self.arm + "".join(f" {k}={v}" for k, v in self.search.items())


@dataclass
class Arm:
    """One built index and its search points."""

    name: str
    family: str
    index_type: str
    build: dict  # build settings
    build_s: float = 0.0
    index_bytes: int = 0
    points: list[Point] = field(default_factory=list)


@dataclass(frozen=True)
class Grid:
    """What is built and searched (the issue's grid at its defaults; shrunk by the test)."""

    k: int = 10
    pq_sub_vectors: tuple[int, ...] = (36, 72)
    partitions: tuple[int, ...] = (256, 1024)
    nprobes: tuple[int, ...] = (10, 20, 50)
    refine: tuple[int, ...] = (0, 10, 30)  # 0 = no re-ranking
    hnsw_partitions: int = 4
    hnsw_ef: tuple[int, ...] = (20, 50, 100, 200)
    faiss_ef: tuple[int, ...] = (16, 32, 64, 128, 256)
    faiss_nlist: int = 1024
    families: tuple[str, ...] = ("lancedb", "numpy", "faiss")


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_base_table(db, rows: np.ndarray):
    """The base LanceDB table: `row` (the row's index in `rows`) and `vector`, written in batches."""
    dim = rows.shape[1]
    schema = pa.schema([("row", pa.int64()), ("vector", pa.list_(pa.float32(), dim))])

    def batches():
        for i in range(0, len(rows), 65_536):
            v = rows[i:i + 65_536]
            yield pa.record_batch([pa.array(np.arange(i, i + len(v), dtype=np.int64)),
                                   pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), dim)], schema=schema)

    return db.create_table("base", data=batches(), schema=schema, mode="overwrite")


def lance_search(table, k: int, nprobes: int = 0, refine: int = 0, ef: int = 0, exact: bool = False) -> Search:
    """One query through LanceDB's Python API, as `tasks.adapters.lance_index` runs it (the row id only)."""
    def run(q: np.ndarray) -> np.ndarray:
        b = table.search(q, vector_column_name="vector").distance_type("cosine").limit(k).select(["row", "_distance"])  # naming _distance: pylance 14 warns per query otherwise
        if exact:
            b = b.bypass_vector_index()
        if nprobes:
            b = b.nprobes(nprobes)
        if refine:
            b = b.refine_factor(refine)
        if ef:
            b = b.ef(ef)
        return b.to_arrow().column("row").to_numpy()
    return run


def _lance_specs(grid: Grid, n_rows: int) -> list[tuple[str, str, dict, object]]:
    """(arm name, index type, build settings, LanceDB index config) of every LanceDB index of the grid."""
    from lancedb.index import IvfHnswSq, IvfPq, IvfRq

    out = []
    for parts in grid.partitions:
        p = min(parts, max(1, n_rows // 8))  # a small check table cannot hold 1,024 partitions
        for sub in grid.pq_sub_vectors:
            out.append((f"lancedb IVF_PQ p{p} s{sub}", "IVF_PQ", {"num_partitions": p, "num_sub_vectors": sub},
                        IvfPq(distance_type="cosine", num_partitions=p, num_sub_vectors=sub)))
        out.append((f"lancedb IVF_RQ p{p}", "IVF_RQ", {"num_partitions": p, "num_bits": 1},
                    IvfRq(distance_type="cosine", num_partitions=p)))
    hp = min(grid.hnsw_partitions, max(1, n_rows // 8))
    out.append((f"lancedb IVF_HNSW_SQ p{hp}", "IVF_HNSW_SQ", {"num_partitions": hp, "m": 20, "ef_construction": 300},
                IvfHnswSq(distance_type="cosine", num_partitions=hp)))
    return out


def lance_arms(db, base, grid: Grid, n_rows: int) -> list[Arm]:
    """Build every LanceDB index of the grid, each on its own shallow clone of `base`, plus the exact scan."""
    ds = base.to_lance()
    exact = Arm("lancedb exact", "lancedb", "flat", {}, index_bytes=_dir_bytes(Path(ds.uri)))
    exact.points.append(Point(exact.name, "lancedb", {}, lance_search(base, grid.k, exact=True), slow=True))
    arms = [exact]
    for i, (name, kind, build, config) in enumerate(_lance_specs(grid, n_rows)):
        ds.shallow_clone(os.path.join(os.path.dirname(ds.uri), f"arm{i}.lance"), ds.version)
        table = db.open_table(f"arm{i}")
        t0 = time.perf_counter()
        table.create_index("vector", config=config)
        arm = Arm(name, "lancedb", kind, build, time.perf_counter() - t0, table.list_indices()[0].size_bytes)
        print(f"built {name} in {arm.build_s:.1f} s", flush=True)
        refines = grid.refine if kind != "IVF_HNSW_SQ" else tuple(r for r in grid.refine if r <= 10)
        if kind == "IVF_HNSW_SQ":
            settings = [{"nprobes": build["num_partitions"], "ef": ef} for ef in grid.hnsw_ef]
        else:
            settings = [{"nprobes": n} for n in grid.nprobes]
        for s in settings:
            for r in refines:
                if s.get("ef", 10**9) < grid.k * max(r, 1):
                    continue  # LanceDB refuses an HNSW ef below the candidates asked for (k x refine)
                search = {**s, **({"refine_factor": r} if r else {})}
                arm.points.append(Point(name, "lancedb", search, lance_search(
                    table, grid.k, s["nprobes"], r, s.get("ef", 0))))
        arms.append(arm)
    return arms


def numpy_arm(rows: np.ndarray, k: int) -> Arm:
    """Brute force over the in-memory rows: the floor any index is measured against."""
    def run(q: np.ndarray) -> np.ndarray:
        s = rows @ q  # (n,)
        top = np.argpartition(-s, k - 1)[:k]
        return top[np.argsort(-s[top])]

    arm = Arm("numpy brute force", "numpy", "flat", {}, index_bytes=rows.nbytes)
    arm.points.append(Point(arm.name, "numpy", {}, run, slow=True))
    return arm


def faiss_arms(rows: np.ndarray, grid: Grid, workdir: Path) -> list[Arm]:
    """faiss HNSW32 (efConstruction 40, faiss's default) and IVF<nlist>,Flat; [] when faiss is missing."""
    try:
        import faiss
    except ImportError:
        return []
    dim, arms = rows.shape[1], []
    nlist = min(grid.faiss_nlist, max(1, len(rows) // 39))  # faiss wants >= 39 training rows a centroid
    for kind, factory in (("HNSW", "HNSW32"), ("IVF_FLAT", f"IVF{nlist},Flat")):
        t0 = time.perf_counter()
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        index.train(rows)
        index.add(rows)
        build_s = time.perf_counter() - t0
        print(f"built faiss {factory} in {build_s:.1f} s", flush=True)
        path = workdir / "faiss.index"
        faiss.write_index(index, str(path))
        arm = Arm(f"faiss {factory}", "faiss", kind, {"factory": factory}, build_s, path.stat().st_size)
        path.unlink()
        arm.points += _faiss_points(faiss, index, arm, grid)
        arms.append(arm)
    return arms


def _faiss_points(faiss, index, arm: Arm, grid: Grid) -> list[Point]:
    def searcher(params) -> Search:
        def run(q: np.ndarray) -> np.ndarray:
            return index.search(q[None, :], grid.k, params=params)[1][0]
        return run

    if arm.index_type == "HNSW":
        return [Point(arm.name, "faiss", {"efSearch": ef}, searcher(faiss.SearchParametersHNSW(efSearch=ef)))
                for ef in grid.faiss_ef]
    return [Point(arm.name, "faiss", {"nprobe": n}, searcher(faiss.SearchParametersIVF(nprobe=n)))
            for n in grid.nprobes]
