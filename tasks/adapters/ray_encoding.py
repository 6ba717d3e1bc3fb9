"""Corpus encoding on Ray Data (`encode.executor: ray`): documents → an actor pool of model replicas →
rows appended to the same LanceDB table the local path fills.

    documents (driver) ─ from_items ─▶ map_batches(DocumentEncoder, ActorPoolStrategy(min, max))
                                        one replica per actor: `{document} [RD]` → unit rows (vector, checkpoint)
                     ─ lance_ray.write_lance(mode="append") ─▶ <uri>/<table>.lance, one commit per chunk

Why each piece:
- The table is created (or resumed) by `LanceIndex.create`, as locally: same schema, same checkpoint stamp in
  its metadata, so `LanceIndex`, the evaluate stage and the model service read either path's table alike.
- Resumable: the driver asks the table which unit ids it holds and sends only the documents not fully stored
  (a document cut short by an interrupted run sends its stored unit ids along, and the actor drops those rows).
  Documents go in chunks of `ray_data.commit_every`, each one Ray Data job ending in one Lance commit, so an
  interrupted run loses at most one chunk.
- Rows are written by Lance's own distributed writer (`lance_ray`, pinned in constraints.txt): Ray's
  `Dataset.write_lance` fails with pylance ≥ 6 (ray-project/ray#65129). Write tasks ask for a fraction of a CPU
  (`ray_data.task_cpus`): whole-CPU tasks beside one 1-CPU actor per node wait for each other, with no error.
- The batch a replica encodes is `encode.batch_size` documents, as the local path batches them; padding is
  masked, so a vector does not depend on its batch (float32: equal to the local encode to ~1e-6).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from onegen_core.config import EncodeConfig, RayDataConfig
from onegen_core.method.segments import Document
from tasks.adapters.index_encoding import EncodedTable
from tasks.adapters.lance_index import AnnSettings, LanceIndex, unit_schema
from tasks.adapters.ray_session import actor_pool, data_context

log = logging.getLogger("onegen.encode")


def document_json(d: Document) -> str:
    return json.dumps({"id": d.id, "units": list(d.units), "title": d.title, "granularity": d.granularity},
                      ensure_ascii=False)


def document_of(text: str) -> Document:
    raw = json.loads(text)
    return Document(raw["id"], tuple(raw["units"]), raw["title"], raw["granularity"])


class DocumentEncoder:
    """One model replica on a Ray Data actor: a batch of documents (`document` column, JSON) → their unit
    rows, as a pyarrow table in the index's schema. Truncation counts go to the `EncodeCounts` actor."""

    def __init__(self, checkpoint: str, dtype: str, max_doc_length: int, threads: int, skip_ids: list[str],
                 counts: Any) -> None:
        import torch

        from onegen_core.config import BackboneConfig, LossConfig
        from onegen_core.method.backbone import checkpoint_id, load_pretrained
        from onegen_core.method.collator import OneGenCollator
        from onegen_core.method.model import OneGenModel

        torch.set_num_threads(threads)
        lm, tokenizer, _ = load_pretrained(checkpoint, BackboneConfig(name=checkpoint, dtype=dtype))
        if torch.cuda.is_available():  # Ray gave this actor a GPU (ray_data.gpus_per_actor): it sees only that one
            lm = lm.to("cuda")
        self.model = OneGenModel(lm, LossConfig()).eval()
        self.collator = OneGenCollator(tokenizer, max_length=max_doc_length, max_doc_length=max_doc_length)
        self.schema = unit_schema(lm.config.hidden_size, checkpoint_id(checkpoint))
        self.skip = set(skip_ids)
        self.counts = counts

    def __call__(self, batch: pa.Table) -> pa.Table:
        from onegen_core.inference.document_encoding import encode_documents

        docs = [document_of(t) for t in batch.column("document").to_pylist()]
        stats: Counter = Counter()
        records, vectors = [], []
        # the whole Ray batch is one forward pass: `encode.batch_size` documents, as the local path batches
        for recs, vecs in encode_documents(self.model, self.collator, docs, batch_size=len(docs), stats=stats):
            keep = [i for i, r in enumerate(recs) if r.id not in self.skip]
            records += [recs[i] for i in keep]
            vectors.append(vecs[keep])  # (kept units, dim)
        import ray.util

        self.counts.add.remote({k: v for k, v in stats.items() if k in ("units_truncated", "documents_truncated")},
                               len(docs), ray.util.get_node_ip_address())
        dim = self.schema.field("vector").type.list_size
        v = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
        return unit_table(self.schema, records, v)


def unit_table(schema: pa.Schema, records: Sequence, vectors: np.ndarray) -> pa.Table:
    """Unit rows in the index's schema: metadata of `records` and their vectors (n, dim) float32."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = schema.field("vector").type.list_size
    checkpoint = schema.metadata[b"onegen.checkpoint_id"].decode()
    cols = {"id": [r.id for r in records], "doc_id": [r.doc_id for r in records],
            "title": [r.title for r in records], "text": [r.text for r in records],
            "doc_text": [r.doc_text for r in records],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel(), pa.float32()), dim),
            "checkpoint": [checkpoint] * len(records)}
    return pa.table(cols, schema=schema)


class EncodeCounts:
    """A Ray actor the replicas report to: units and documents cut by truncation, documents encoded, and the
    nodes the replicas ran on."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.nodes: set[str] = set()

    def add(self, counts: dict[str, int], documents: int, node: str) -> None:
        self.counts.update(counts)
        self.counts["documents"] += documents
        self.nodes.add(node)

    def get(self) -> tuple[dict[str, int], list[str]]:
        return dict(self.counts), sorted(self.nodes)


def actor_resources(rd: RayDataConfig) -> dict[str, float]:
    """What each replica asks Ray for: a GPU when the cluster has any (`ray_data.gpus_per_actor`), else CPUs."""
    import ray

    if ray.cluster_resources().get("GPU", 0) > 0 and rd.gpus_per_actor > 0:
        return {"num_gpus": rd.gpus_per_actor, "num_cpus": rd.cpus_per_actor}
    return {"num_cpus": rd.cpus_per_actor}


def encode_chunk(docs: Sequence[Document], skip_ids: list[str], cfg: EncodeConfig, rd: RayDataConfig, dtype: str,
                 table_uri: str, schema: pa.Schema, counts: Any) -> None:
    """One Ray Data job: `docs` through the actor pool, their rows appended to `table_uri` in one commit."""
    import lance_ray
    import ray

    data_context(rd)
    threads = max(1, int(rd.cpus_per_actor))
    ds = ray.data.from_items([{"document": document_json(d)} for d in docs])
    rows = ds.map_batches(
        DocumentEncoder,
        fn_constructor_kwargs={"checkpoint": cfg.checkpoint, "dtype": dtype, "max_doc_length": cfg.max_doc_length,
                               "threads": threads, "skip_ids": skip_ids, "counts": counts},
        batch_size=cfg.batch_size, batch_format="pyarrow",
        compute=actor_pool(rd),
        **actor_resources(rd),
    )
    lance_ray.write_lance(rows, table_uri, schema=schema, mode="append", ray_remote_args={"num_cpus": rd.task_cpus})


def encode_table_on_ray(docs: Sequence[Document], cfg: EncodeConfig, rd: RayDataConfig, dtype: str, dim: int,
                        ck: str, table: str, desc: str) -> EncodedTable:
    """`index_encoding.encode_table` on Ray Data: the same table, report and resume rule."""
    import ray
    from tqdm.auto import tqdm

    index = LanceIndex.create(cfg.uri, dim, ck, table)
    done = index.ids()
    todo = [d for d in docs if not set(d.unit_ids()) <= done]
    log.info("%s: %d documents (%d units); %d already encoded by checkpoint %s; encoding %d on Ray Data "
             "(%d-%d replicas, %d documents a commit)", table, len(docs), sum(len(d.unit_ids()) for d in docs),
             len(docs) - len(todo), ck, len(todo), rd.actors_min, rd.actors_max, rd.commit_every)
    counts = ray.remote(num_cpus=0)(EncodeCounts).remote()
    bar = tqdm(total=len(todo), desc=desc, unit="doc")
    for start in range(0, len(todo), rd.commit_every):
        chunk = todo[start:start + rd.commit_every]
        # units a previous, interrupted run stored for these documents: not written twice
        stored = sorted(u for d in chunk for u in d.unit_ids() if u in done)
        encode_chunk(chunk, stored, cfg, rd, dtype, index.table_uri, index.table.schema, counts)
        bar.update(len(chunk))
    bar.close()
    stats, nodes = ray.get(counts.get.remote())
    index = LanceIndex(cfg.uri, table)  # the appended versions
    log.info("%s: encoded on %d Ray node(s): %s", table, len(nodes), ", ".join(nodes) or "-")
    return EncodedTable(table=table, documents=len(docs), documents_encoded_now=len(todo), units_in_index=len(index),
                        units_truncated=stats.get("units_truncated", 0),
                        documents_truncated=stats.get("documents_truncated", 0),
                        ann_index=index.build_ann_index(cfg.ann_min_rows, AnnSettings.from_config(cfg)), ray_nodes=tuple(nodes))


def encode_on_ray(tables: Sequence[tuple[str, Sequence[Document], str]], cfg: EncodeConfig, rd: RayDataConfig,
                  address: str, dtype: str, dim: int, ck: str) -> list[EncodedTable]:
    """Each (table, documents, progress label) of the encode stage through `encode_table_on_ray`, inside a
    Ray session: the cluster at `address`, or a local Ray started here and shut down after."""
    import ray

    from tasks.adapters.ray_session import connect, worker_env

    started = connect(address, worker_env(max(1, int(rd.cpus_per_actor)), use_gpu=False),
                      local_cpus=int(rd.actors_max * rd.cpus_per_actor + 0.999))
    try:
        return [encode_table_on_ray(docs, cfg, rd, dtype, dim, ck, table, desc) for table, docs, desc in tables]
    finally:
        if started:
            ray.shutdown()
