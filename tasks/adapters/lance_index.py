"""The LanceDB adapter of `onegen_core.inference.index.VectorIndex`.

One table per encoded corpus: id, doc_id, title, text, doc_text, vector and the checkpoint that encoded
it (a column, and the table's schema metadata so opening the table tells the checkpoint without a
scan). The URI is a local directory by default; `s3://…` or `gs://…` URIs work unchanged (credentials
from the environment, as LanceDB/object_store read them).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import IvfHnswSq, IvfPq, IvfRq

from onegen_core.inference.index import ExactIndex, Hit, IndexMismatchError, UnitRecord

log = logging.getLogger(__name__)
CHECKPOINT_KEY = b"onegen.checkpoint_id"
SEARCH_KEY = b"onegen.ann_search"  # the search settings the ANN index was built for (JSON of AnnPlan)
_CHUNK = 500  # ids per `IN (…)` filter: bounded SQL strings however many documents are asked for


@dataclass(frozen=True)
class AnnSettings:
    """How an ANN index is sized from the table (params `encode.ann_*`; defaults = params.yaml's).
    Measured at 1M rows x 576 dims in bench/index_scale.py (metrics/index_scale.json)."""

    index_type: str = "ivf_rq"
    rows_per_partition: int = 4096
    pq_sub_vector_dims: int = 16
    nprobes: int = 20
    refine_factor: int = 10
    hnsw_ef: int = 0

    @classmethod
    def from_config(cls, cfg) -> "AnnSettings":
        """From an `EncodeConfig` (already range-checked by the config loader)."""
        return cls(cfg.ann_index_type, cfg.ann_rows_per_partition, cfg.ann_pq_sub_vector_dims, cfg.ann_nprobes,
                   cfg.ann_refine_factor, cfg.ann_hnsw_ef)


@dataclass(frozen=True)
class AnnPlan:
    """One table's ANN index: what is built and how every search of it runs (stored in the table)."""

    index_type: str  # "ivf_pq" | "ivf_rq" | "ivf_hnsw_sq"
    num_partitions: int
    num_sub_vectors: int  # ivf_pq only (0 otherwise)
    nprobes: int
    refine_factor: int  # 0 = rank by the compressed codes alone
    ef: int  # ivf_hnsw_sq only (0 = LanceDB's default)

    def config(self):
        """The LanceDB index config (cosine distance throughout: vectors are unit [RD] states)."""
        if self.index_type == "ivf_pq":
            return IvfPq(distance_type="cosine", num_partitions=self.num_partitions, num_sub_vectors=self.num_sub_vectors)
        if self.index_type == "ivf_rq":
            return IvfRq(distance_type="cosine", num_partitions=self.num_partitions)
        return IvfHnswSq(distance_type="cosine", num_partitions=self.num_partitions)


def plan_ann_index(n_rows: int, dim: int, s: AnnSettings) -> AnnPlan:
    """The index for a table of `n_rows` vectors of `dim`: partitions = rows / rows_per_partition (at
    least 1), nprobes at most the partitions; PQ sub-vectors of `pq_sub_vector_dims` dimensions each
    (the largest divisor of dim not above it when it does not divide dim: PQ needs dim % sub-vectors == 0)."""
    if s.index_type not in ("ivf_pq", "ivf_rq", "ivf_hnsw_sq"):
        raise ValueError(f"encode.ann_index_type: {s.index_type!r} is not ivf_pq, ivf_rq or ivf_hnsw_sq")
    parts = max(1, n_rows // s.rows_per_partition)
    sub = 0
    if s.index_type == "ivf_pq":
        width = next(d for d in range(min(s.pq_sub_vector_dims, dim), 0, -1) if dim % d == 0)
        sub = dim // width
    ef = s.hnsw_ef if s.index_type == "ivf_hnsw_sq" else 0
    return AnnPlan(s.index_type, parts, sub, min(s.nprobes, parts), s.refine_factor, ef)


def unit_schema(dim: int, checkpoint_id: str) -> pa.Schema:
    """The schema of a onegen table: unit metadata, the vector, the checkpoint (a column and the metadata)."""
    return pa.schema(
        [
            ("id", pa.string()),
            ("doc_id", pa.string()),
            ("title", pa.string()),
            ("text", pa.string()),
            ("doc_text", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
            ("checkpoint", pa.string()),
        ],
        metadata={CHECKPOINT_KEY: checkpoint_id.encode()},
    )


def table_names(uri: str) -> list[str]:
    """Every table of the database at `uri`, sorted (all pages of LanceDB's listing)."""
    db = lancedb.connect(uri)
    names: list[str] = []
    token = None
    while True:
        page = db.list_tables(page_token=token)
        names += list(page.tables)
        token = page.page_token
        if not token:
            return sorted(names)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class LanceIndex:
    """Open with `LanceIndex(uri, table)`; create or resume with `LanceIndex.create(...)`."""

    def __init__(self, uri: str, table: str = "units", refine_factor: int = 10) -> None:
        self.uri, self.table_name = uri, table
        self.table = lancedb.connect(uri).open_table(table)
        meta = self.table.schema.metadata or {}
        if CHECKPOINT_KEY not in meta:
            raise IndexMismatchError(f"{uri}/{table}: table has no {CHECKPOINT_KEY.decode()} metadata; not a onegen index")
        self.checkpoint_id = meta[CHECKPOINT_KEY].decode()
        self.dim = self.table.schema.field("vector").type.list_size
        self.refine_factor = refine_factor
        self._exact: ExactIndex | None = None  # in-memory copy for exact search (no ANN index), see `search`

    @classmethod
    def create(cls, uri: str, dim: int, checkpoint_id: str, table: str = "units") -> "LanceIndex":
        """Open the table for `checkpoint_id`, creating it; a table left by an interrupted run of the same
        checkpoint is kept (resume), one from another checkpoint is replaced."""
        db = lancedb.connect(uri)
        try:
            existing = db.open_table(table)
        except ValueError:  # "Table '…' was not found"
            existing = None
        if existing is not None:
            old = (existing.schema.metadata or {}).get(CHECKPOINT_KEY, b"").decode()
            if old == checkpoint_id and existing.schema.field("vector").type.list_size == dim:
                log.info("resuming %s/%s: %d units already encoded", uri, table, existing.count_rows())
                return cls(uri, table)
            log.info("replacing %s/%s (encoded by %r, now %r)", uri, table, old, checkpoint_id)
        db.create_table(table, schema=unit_schema(dim, checkpoint_id), mode="overwrite")
        return cls(uri, table)

    @property
    def version(self) -> int:
        """The Lance version of the table this object reads (a committed, complete state)."""
        return int(self.table.version)

    def refresh(self) -> bool:
        """Move to the table's latest committed version (what `onegen index add` wrote since); True when it
        moved. A version written by another checkpoint is not taken: the vectors would not be comparable,
        so the object stays on the version it had, and says so in the log."""
        before = self.version
        self.table.checkout_latest()
        if self.version == before:
            return False
        now = (self.table.schema.metadata or {}).get(CHECKPOINT_KEY, b"").decode()
        if now != self.checkpoint_id:
            log.error("%s/%s: version %d was encoded by checkpoint %r, not %r; staying on version %d", self.uri,
                      self.table_name, self.version, now, self.checkpoint_id, before)
            self.table.checkout(before)
            return False
        self._exact = None  # the in-memory exact copy is of the old version
        log.info("%s/%s: now version %d (%d rows)", self.uri, self.table_name, self.version, len(self))
        return True

    @property
    def table_uri(self) -> str:
        """The table's Lance dataset (LanceDB keeps table `t` of database `uri` at `<uri>/t.lance`): what a
        distributed writer appends to."""
        return f"{self.uri.rstrip('/')}/{self.table_name}.lance"

    def __len__(self) -> int:
        return self.table.count_rows()

    def ids(self) -> set[str]:
        return set(self.table.to_arrow().column("id").to_pylist()) if len(self) else set()

    def records(self) -> list[UnitRecord]:
        """Every stored unit's metadata (no vectors), in table order: baselines index the same units."""
        if not len(self):
            return []
        t = self.table.to_arrow().select(["id", "doc_id", "title", "text", "doc_text"]).to_pylist()
        return [UnitRecord(r["id"], r["doc_id"], r["title"], r["text"], r["doc_text"]) for r in t]

    def add(self, records: Sequence[UnitRecord], vectors: np.ndarray) -> None:
        if not records:
            return
        v = np.ascontiguousarray(vectors, dtype=np.float32)  # (n, dim)
        cols = {
            "id": [r.id for r in records],
            "doc_id": [r.doc_id for r in records],
            "title": [r.title for r in records],
            "text": [r.text for r in records],
            "doc_text": [r.doc_text for r in records],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), self.dim),
            "checkpoint": [self.checkpoint_id] * len(records),
        }
        self.table.add(pa.table(cols, schema=self.table.schema))
        self._exact = None

    def units_of(self, doc_ids: Collection[str]) -> dict[str, list[UnitRecord]]:
        """The stored units of the given documents (no vectors), by document id: what `onegen index add`
        compares a user's documents with before it refuses, skips or replaces them."""
        out: dict[str, list[UnitRecord]] = {}
        wanted = sorted(set(doc_ids))
        for i in range(0, len(wanted), _CHUNK):
            ids = ", ".join(_quote(d) for d in wanted[i:i + _CHUNK])
            rows = (self.table.search().where(f"doc_id IN ({ids})")
                    .select(["id", "doc_id", "title", "text", "doc_text"]).limit(None).to_list())
            for r in rows:
                out.setdefault(r["doc_id"], []).append(
                    UnitRecord(r["id"], r["doc_id"], r["title"], r["text"], r["doc_text"]))
        return out

    def duplicate_ids(self) -> dict[str, int]:
        """Unit ids stored more than once, with their counts: a table two writers appended to at once
        (`onegen index check`). Every search of such a table is refused (`ExactIndex`)."""
        if not len(self):
            return {}
        ids = self.table.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist()
        return {k: v for k, v in sorted(Counter(ids).items()) if v > 1}

    def drop_duplicates(self) -> int:
        """Keep one row of every duplicated unit id (the first stored; a duplicate is the same document
        encoded twice by the same checkpoint), delete the rest; returns the rows removed. The caller holds
        the table's writer lock (`onegen index repair`)."""
        dup = sorted(self.duplicate_ids())
        removed = 0
        for i in range(0, len(dup), _CHUNK):
            where = f"id IN ({', '.join(_quote(d) for d in dup[i:i + _CHUNK])})"
            rows = self.table.search().where(where).limit(None).to_arrow().to_pylist()
            first: dict[str, dict] = {}
            for r in rows:
                first.setdefault(r["id"], r)
            self.table.delete(where)
            kept = list(first.values())
            self.add([UnitRecord(r["id"], r["doc_id"], r["title"], r["text"], r["doc_text"]) for r in kept],
                     np.array([r["vector"] for r in kept], np.float32))  # (n_kept, dim)
            removed += len(rows) - len(kept)
        self._exact = None
        return removed

    def delete_documents(self, doc_ids: Collection[str]) -> None:
        """Remove every unit of these documents (`onegen index add --update` re-encodes them)."""
        wanted = sorted(set(doc_ids))
        for i in range(0, len(wanted), _CHUNK):
            self.table.delete(f"doc_id IN ({', '.join(_quote(d) for d in wanted[i:i + _CHUNK])})")

    def info(self) -> dict:
        """Rows, documents, dimension, checkpoint and search kind of the table (`onegen index info`)."""
        n = len(self)
        docs = (len(set(self.table.search().select(["doc_id"]).limit(None).to_arrow().column("doc_id").to_pylist()))
                if n else 0)
        ann = [i for i in self.table.list_indices() if i.index_type.startswith("Ivf")]
        return {"uri": self.uri, "table": self.table_name, "version": self.version, "rows": n, "documents": docs,
                "dim": self.dim,
                "checkpoint_id": self.checkpoint_id,
                "index_type": ann[0].index_type if ann else "exact (brute-force cosine)"}

    def _load_exact(self) -> ExactIndex:
        t = self.table.to_arrow()
        if not t.num_rows:
            return ExactIndex([], np.zeros((0, self.dim), np.float32), self.checkpoint_id)
        vectors = np.asarray(t.column("vector").combine_chunks().flatten(), dtype=np.float32).reshape(-1, self.dim)
        return ExactIndex(self.records(), vectors, self.checkpoint_id)

    def has_ann_index(self) -> bool:
        return any(i.index_type.startswith("Ivf") for i in self.table.list_indices())

    def build_ann_index(self, min_rows: int, settings: AnnSettings | None = None) -> bool:
        """An ANN index sized by `plan_ann_index` when the table has at least `min_rows` rows; below that,
        exact search is fast enough and exact. The plan is stored in the table's metadata, so every later
        search (evaluate, `onegen ask`, the server) probes and re-ranks as it was built to. Returns whether
        an index was built."""
        n = len(self)
        if n < min_rows:
            log.info("%d rows < %d: exact search, no ANN index", n, min_rows)
            return False
        plan = plan_ann_index(n, self.dim, settings or AnnSettings())
        self.table.create_index("vector", replace=True, config=plan.config())
        self.table.to_lance().update_schema_metadata({SEARCH_KEY.decode(): json.dumps(asdict(plan))})
        self.table = lancedb.connect(self.uri).open_table(self.table_name)  # the new metadata
        log.info("built %s over %d rows: %s", plan.index_type.upper(), n, plan)
        return True

    def ann_plan(self) -> AnnPlan | None:
        """The stored plan of this table's ANN index; None without one. An index built before plans were
        stored gets the search settings of the time (refine factor of the constructor, LanceDB's nprobes)."""
        if not self.has_ann_index():
            return None
        raw = (self.table.schema.metadata or {}).get(SEARCH_KEY)
        if raw is None:
            return AnnPlan("ivf_pq", 0, 0, 0, self.refine_factor, 0)
        return AnnPlan(**json.loads(raw))

    def search(
        self, queries: np.ndarray, k: int, allowed: Sequence[Collection[str] | None] | None = None,
        exclude: Sequence[Collection[str] | None] | None = None,
    ) -> list[list[Hit]]:
        q = np.asarray(queries, dtype=np.float32)  # (n, dim)
        plan = self.ann_plan()
        if plan is None:
            # below the ANN size the search is exact anyway: one matrix product over an in-memory copy
            # answers a whole batch of queries, where LanceDB's per-query scan cost ~10-50 ms each
            # (entity linking issues thousands of queries)
            if self._exact is None:
                self._exact = self._load_exact()
            return self._exact.search(q, k, allowed, exclude)
        out: list[list[Hit]] = []
        for i in range(q.shape[0]):
            query = self.table.search(q[i], vector_column_name="vector").distance_type("cosine").limit(k)
            if plan.nprobes:
                query = query.nprobes(plan.nprobes)
            if plan.refine_factor:
                query = query.refine_factor(plan.refine_factor)  # re-rank k x factor candidates exactly
            if plan.index_type == "ivf_hnsw_sq" and (plan.ef or plan.refine_factor):
                # LanceDB refuses an ef below the candidates it is asked for (k x refine factor)
                query = query.ef(max(plan.ef, k * max(1, plan.refine_factor)))
            where = []
            if allowed is not None and allowed[i] is not None:
                ids = ", ".join(_quote(a) for a in allowed[i])
                where.append(f"(id IN ({ids}) OR doc_id IN ({ids}))" if ids else "false")
            if exclude is not None and exclude[i]:
                ids = ", ".join(_quote(a) for a in exclude[i])
                where.append(f"(id NOT IN ({ids}) AND doc_id NOT IN ({ids}))")
            if "false" in where:
                query = None
            elif where:
                query = query.where(" AND ".join(where), prefilter=True)
            rows = query.select(["id", "doc_id", "title", "text", "doc_text", "_distance"]).to_list() if query is not None else []
            out.append([Hit(r["id"], 1.0 - float(r["_distance"]), r["doc_id"], r["title"], r["text"], r["doc_text"])
                        for r in rows])
        return out
