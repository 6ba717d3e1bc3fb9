"""Evaluation on Ray Data (`evaluate.executor: ray`): OneGen's generation batches through an actor pool of
replicas, each holding the model and its own handle on the LanceDB tables.

    jobs (driver): the batches the local loop would run, in its order
        ─ from_items ─▶ map_batches(GenerationReplica, ActorPoolStrategy(min, max), batch_size=1)
        ─ ordered results ─▶ merged as the local loop merges them ─▶ metrics computed once, on the driver

Why it equals the local run: a job is exactly one batch of the local loop (multi-hop questions in input
order, `evaluate.batch_size` at a time; linking windows in the local loop's length order, `el_batch_size` at
a time; ED one window after another), each replica runs the core function the local path runs on that batch,
and the results come back in job order (`preserve_order`), so the rows, the per-article mention lists and the
counts are the local ones. Greedy decoding of one batch is deterministic, so the metrics are equal.

Why each replica opens the index itself (rather than searches sent to one index actor): a search is ~1 ms
against a forward pass of tens of ms, LanceDB reads the table from a path (or `s3://`) that every node
reaches, and a shared index actor would serialise every replica's searches through one process.

The baselines (MiniLM, BM25 pipelines) run on the driver, as locally: their retrievers are separate models
and indexes; only OneGen's passes go to Ray.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from onegen_core.config import RayDataConfig
from onegen_core.evaluation.linking import Window, length_order
from onegen_core.inference.generation import EngineStats
from tasks.adapters.ray_session import actor_pool, data_context

log = logging.getLogger("onegen.evaluate")


@dataclass(frozen=True)
class ReplicaSettings:
    """What every replica loads: the checkpoint, its weights dtype, and the tables it searches."""

    checkpoint: str
    dtype: str
    index_uri: str
    units_table: str
    kb_table: str
    threads: int = 1


@dataclass(frozen=True)
class GenerationJob:
    """One batch of the local loop: `kind` multihop (questions `items` in `setting`), link (windows) or ed
    (windows with the gold mentions of their articles); `options` the loop's settings."""

    kind: str
    items: tuple
    options: dict[str, Any] = field(default_factory=dict)


class GenerationReplica:
    """A Ray Data actor: the checkpoint and both tables, opened once; each row is one `GenerationJob`."""

    def __init__(self, settings: ReplicaSettings) -> None:
        import torch

        from onegen_core.config import BackboneConfig
        from onegen_core.method.backbone import checkpoint_id, load_pretrained
        from tasks.adapters.lance_index import LanceIndex

        torch.set_num_threads(settings.threads)
        self.lm, self.tok, _ = load_pretrained(settings.checkpoint,
                                               BackboneConfig(name=settings.checkpoint, dtype=settings.dtype))
        if torch.cuda.is_available():  # Ray gave this actor a GPU (ray_data.gpus_per_actor): it sees only that one
            self.lm = self.lm.to("cuda")
        self.lm.eval()
        self.ck = checkpoint_id(settings.checkpoint)
        self.settings = settings
        self._units = self._kb = None
        self._open = LanceIndex

    def units(self):
        if self._units is None:
            self._units = self._open(self.settings.index_uri, self.settings.units_table)
            self.unit_doc = {r.id: r.doc_id for r in self._units.records()}.get
        return self._units

    def kb(self):
        if self._kb is None:
            self._kb = self._open(self.settings.index_uri, self.settings.kb_table)
        return self._kb

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import ray.util

        node = ray.util.get_node_ip_address()
        return {"result": [{**self.run(job), "node": node} for job in batch["job"]]}

    def run(self, job: GenerationJob) -> dict[str, Any]:
        stats = EngineStats()
        if job.kind == "multihop":
            from onegen_core.evaluation.multihop import evaluate_multihop
            from onegen_core.inference.generation import RetrievalPolicy

            o = job.options
            policy = RetrievalPolicy(mode="rag", max_retrievals=o["max_retrievals"], max_new_tokens=o["max_new_tokens"])
            units = self.units()
            rows, _ = evaluate_multihop(self.lm, self.tok, list(job.items), units, o["setting"], policy, self.unit_doc,
                                        len(job.items), units.checkpoint_id, stats=stats)
            return {"rows": rows, "stats": stats}
        if job.kind == "link":
            from onegen_core.evaluation.linking import link_windows

            o = job.options
            preds, finish = link_windows(self.lm, self.tok, list(job.items), self.kb(), o["max_retrievals"],
                                         len(job.items), self.ck, stats=stats, draft_tokens=o["draft_tokens"])
            return {"predictions": preds, "finish": finish, "stats": stats}
        if job.kind == "ed":
            from onegen_core.evaluation.linking import disambiguate_windows

            preds, counts = disambiguate_windows(self.lm, self.tok, list(job.items), job.options["gold"], self.kb())
            return {"predictions": preds, "counts": counts}
        raise ValueError(f"unknown generation job kind {job.kind!r}")


def replica_resources(rd: RayDataConfig) -> dict[str, float]:
    """What each replica asks Ray for: a GPU when the cluster has any (`ray_data.gpus_per_actor`), else CPUs."""
    import ray

    if ray.cluster_resources().get("GPU", 0) > 0 and rd.gpus_per_actor > 0:
        return {"num_gpus": rd.gpus_per_actor, "num_cpus": rd.cpus_per_actor}
    return {"num_cpus": rd.cpus_per_actor}


class RayGenerator:
    """The Ray side of the evaluate stage: `run_jobs` sends jobs to the replica pool, in order. Open it with
    `RayGenerator.open(...)` inside the Ray session of the stage (`tasks.adapters.ray_session.connect`)."""

    def __init__(self, settings: ReplicaSettings, rd: RayDataConfig) -> None:
        self.settings, self.rd = settings, rd
        self.nodes: set[str] = set()  # where replicas ran (reported in metrics/evaluate.json)

    def run_jobs(self, jobs: Sequence[GenerationJob], desc: str) -> list[dict[str, Any]]:
        import ray
        data_context(self.rd).execution_options.preserve_order = True  # results in job order
        ds = ray.data.from_items([{"job": j} for j in jobs], override_num_blocks=len(jobs))
        out = ds.map_batches(GenerationReplica, fn_constructor_kwargs={"settings": self.settings}, batch_size=1,
                             compute=actor_pool(self.rd),
                             **replica_resources(self.rd))
        results = [row["result"] for row in out.iter_rows()]
        nodes = sorted({r["node"] for r in results})
        self.nodes.update(nodes)
        log.info("%s: %d jobs on Ray Data, replicas on %s", desc, len(results), ", ".join(nodes))
        return results

    def multihop_rows(self, records: Sequence, setting: str, batch_size: int, max_retrievals: int,
                      max_new_tokens: int, desc: str) -> tuple[list[dict], EngineStats]:
        """`evaluate_multihop`'s rows for OneGen, one job per batch of `batch_size` questions."""
        opts = {"setting": setting, "max_retrievals": max_retrievals, "max_new_tokens": max_new_tokens}
        jobs = [GenerationJob("multihop", tuple(records[i:i + batch_size]), opts)
                for i in range(0, len(records), batch_size)]
        rows, stats = [], EngineStats()
        for r in self.run_jobs(jobs, desc):
            rows += r["rows"]
            stats.merge(r["stats"])
        return rows, stats

    def link(self, windows: Sequence[Window], batch_size: int, max_retrievals: int,
             draft_tokens: int) -> tuple[dict[str, list], Counter, EngineStats]:
        """`link_windows` on Ray: the local loop's batches (windows by length), merged in that order."""
        order = length_order(windows)
        opts = {"max_retrievals": max_retrievals, "draft_tokens": draft_tokens}
        jobs = [GenerationJob("link", tuple(windows[j] for j in order[i:i + batch_size]), opts)
                for i in range(0, len(order), batch_size)]
        by_article: dict[str, list] = {}
        finish: Counter = Counter()
        stats = EngineStats()
        for r in self.run_jobs(jobs, "entity linking (MD+EL)"):
            for article, mentions in r["predictions"].items():
                by_article.setdefault(article, []).extend(mentions)
            finish.update(r["finish"])
            stats.merge(r["stats"])
        return by_article, finish, stats

    def disambiguate(self, windows: Sequence[Window], gold: dict[str, set[tuple]],
                     chunk: int) -> tuple[dict[str, list], Counter]:
        """`disambiguate_windows` on Ray: windows in their order, `chunk` a job, merged in that order."""
        jobs = []
        for i in range(0, len(windows), chunk):
            part = tuple(windows[i:i + chunk])
            jobs.append(GenerationJob("ed", part, {"gold": {w.article: gold.get(w.article, set()) for w in part}}))
        out: dict[str, list] = {}
        counts: Counter = Counter()
        for r in self.run_jobs(jobs, "entity disambiguation (gold mentions)"):
            for article, mentions in r["predictions"].items():
                out.setdefault(article, []).extend(mentions)
            counts.update(r["counts"])
        return out, counts


class LazyRayGenerator:
    """A `RayGenerator` whose Ray session starts on first use (a fully cached evaluation starts no Ray) and
    is shut down by `close` if this process started it."""

    def __init__(self, settings: ReplicaSettings, rd: RayDataConfig, address: str) -> None:
        self.settings, self.rd, self.address = settings, rd, address
        self._gen: RayGenerator | None = None
        self._started = False

    def get(self) -> RayGenerator:
        if self._gen is None:
            from tasks.adapters.ray_session import connect, worker_env

            self._started = connect(self.address, worker_env(self.settings.threads, use_gpu=False),
                                    local_cpus=int(self.rd.actors_max * self.rd.cpus_per_actor + 0.999))
            self._gen = RayGenerator(self.settings, self.rd)
        return self._gen

    @property
    def nodes(self) -> list[str]:
        return sorted(self._gen.nodes) if self._gen is not None else []

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
        self._gen, self._started = None, False


def multihop_piece_on_ray(remote: LazyRayGenerator, piece: str, records: Sequence, setting: str, batch_size: int,
                          max_retrievals: int, max_new_tokens: int) -> list[dict]:
    """`eval_systems.multihop_piece` for OneGen on Ray: the same rows and the same log line."""
    rows, stats = remote.get().multihop_rows(records, setting, batch_size, max_retrievals, max_new_tokens, piece)
    log.info("%s: %d questions, %d forward passes, %d searches in %.0f s", piece, len(rows),
             stats.forward_passes, stats.searches, stats.seconds)
    return rows


def link_piece_on_ray(remote: LazyRayGenerator, windows: Sequence[Window], max_retrievals: int, batch_size: int,
                      draft_tokens: int) -> dict[str, Any]:
    """`eval_systems.link_piece` on Ray: the same record (the seconds are the replicas' generation time summed)."""
    from tasks.adapters.result_cache import mentions_to_json

    preds, finish, stats = remote.get().link(windows, batch_size, max_retrievals, draft_tokens)
    return {"predictions": mentions_to_json(preds), "finish": dict(finish), "forward_passes": stats.forward_passes,
            "searches": stats.searches, "draft_tokens_fed": stats.draft_tokens_fed,
            "draft_tokens_kept": stats.draft_tokens_kept, "seconds": round(stats.seconds, 1)}


def ed_piece_on_ray(remote: LazyRayGenerator, windows: Sequence[Window], gold: dict[str, set[tuple]],
                    chunk: int) -> dict[str, Any]:
    """`eval_systems.ed_piece` on Ray: the same record (wall-clock seconds of the Ray job)."""
    import time

    from tasks.adapters.result_cache import mentions_to_json

    t0 = time.perf_counter()
    preds, counts = remote.get().disambiguate(windows, gold, chunk)
    return {"predictions": mentions_to_json(preds), "counts": dict(counts),
            "seconds": round(time.perf_counter() - t0, 1)}
