"""The three systems `bench/serve_rag.py` serves, and the ≥100k-unit corpus they search.

Systems (one checkpoint, one `ModelService`, one `BatchingEngine` each phase):
- onegen: `ModelService.run_ask` as `onegen api` runs it: the [RQ] hidden state is the query vector.
- pipeline: the same generator; at each [RQ] a separate MiniLM retriever encodes the row's query text
  (`QueryText`: the text the evaluate stage's MiniLM system gives it) and searches its own MiniLM table.
- grit: the same generator; at each [RQ] the same LLM re-encodes the query text in a second forward pass
  (no KV cache: `prompt(question_prompt(text)) + [RQ]`, the [RQ] position's last hidden state) and
  searches the checkpoint's own table. For a first hop the text is the question, so this vector is the
  one OneGen computed (tested); later hops read the question and the pasted passages as text.

`ModelService` has no hook for another retriever, so a baseline runs the service's own `run_ask` with
`query_encoder` bound into the `generate` call it makes (`query_encoder_in_service`: a scoped swap of
`tasks.serving.service.generate`, restored after each batch), the way the evaluate stage's baselines
call `generate(..., query_encoder=...)`. The baselines' retrievers are batched: the texts of every row
that emitted [RQ] in one engine step are encoded in one call (`RetrieverBridge`), as a serving pipeline
would batch them (the evaluate stage encodes row by row; batching only favours the baselines).

Corpus: the checkpoint's own [RD] vectors of a real index (the encode stage's table) are replicated to
≥ `units` rows: copy 0 of each unit is the unit itself, copy k ≥ 1 is `normalise(v + sigma·g/√dim)`,
g ~ N(0, I) (cosine ≈ 1/√(1+sigma²) to its original), with the unit's text, title and document id. The
MiniLM table holds MiniLM's vectors of the same unit texts, replicated the same way. A copy keeps its
document id, so excluding a pasted document excludes its copies and a search finds the same passages
as on the real index, while every search covers the whole table. Both tables are LanceDB tables built
by `LanceIndex` with the ANN index `onegen index add` would build (`encode.ann_min_rows`).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from onegen_core.inference.index import UnitRecord
from onegen_core.method.encoding import SegmentTokenizer
from onegen_core.method.prompts import question_prompt
from onegen_core.method.tokens import SpecialTokenIds

ONEGEN_TABLE = "units"
MINILM_TABLE = "minilm_units"


# ------------------------------------------------------------------------------------------ corpus

def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def perturbed_copy(vectors: np.ndarray, k: int, sigma: float, seed: int) -> np.ndarray:
    """Copy k of (n, dim) vectors, as unit vectors: copy 0 is each vector normalised, copy k ≥ 1 is
    normalise(v + sigma * g / sqrt(dim)), g ~ N(0, I) drawn from the generator of (seed, k)."""
    v = _normalise(np.asarray(vectors, dtype=np.float32))  # (n, dim)
    if k == 0:
        return v
    g = np.random.default_rng([seed, k]).standard_normal(v.shape, dtype=np.float32)
    return _normalise(v + (sigma / np.sqrt(v.shape[1])) * g)


def perturbed_copies(vectors: np.ndarray, copies: int, sigma: float, seed: int) -> np.ndarray:
    """(n, dim) → (n * copies, dim), copy-major (all of copy 0, then copy 1, …)."""
    return np.concatenate([perturbed_copy(vectors, k, sigma, seed) for k in range(copies)])


def copy_record(r: UnitRecord, k: int) -> UnitRecord:
    """Copy k of a unit: copy 0 is the unit, copy k is `<id>~k` with the same text and document."""
    return r if k == 0 else UnitRecord(f"{r.id}~{k}", r.doc_id, r.title, r.text, r.doc_text)


def replicated_records(records: Sequence[UnitRecord], copies: int) -> list[UnitRecord]:
    """The records in `perturbed_copies` order."""
    return [copy_record(r, k) for k in range(copies) for r in records]


def copies_for(n_real: int, units: int) -> int:
    """Copies of each real unit so that the table holds at least `units` rows."""
    if n_real < 1:
        raise ValueError("the source index is empty")
    return max(1, -(-units // n_real))


def _fill_table(uri: str, table: str, checkpoint_id: str, records: Sequence[UnitRecord], vectors: np.ndarray,
                copies: int, sigma: float, seed: int, ann_min_rows: int) -> dict:
    from tasks.adapters.lance_index import LanceIndex

    index = LanceIndex.create(uri, vectors.shape[1], checkpoint_id, table)
    n = len(records)
    step = max(1, 20_000 // n)  # copies per write: ~20k rows a fragment
    for k0 in range(0, copies, step):
        ks = range(k0, min(copies, k0 + step))
        index.add([copy_record(r, k) for k in ks for r in records],
                  np.concatenate([perturbed_copy(vectors, k, sigma, seed) for k in ks]))
    ann = index.build_ann_index(ann_min_rows)
    return {"table": table, "rows": len(index), "dim": int(vectors.shape[1]), "ann_index": ann,
            "index_type": index.info()["index_type"], "disk_bytes": _du(Path(index.table_uri))}


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def build_corpus(source_uri: str, source_table: str, checkpoint_id: str, minilm, uri: str, units: int,
                 sigma: float, seed: int, ann_min_rows: int) -> dict:
    """The OneGen and MiniLM tables of ≥ `units` rows at `uri` (see the module docstring), rebuilt only
    when the recipe changed. Returns what was built (rows, dims, index type, disk bytes)."""
    from tasks.adapters.lance_index import LanceIndex

    source = LanceIndex(source_uri, source_table)
    if source.checkpoint_id != checkpoint_id:
        raise ValueError(f"{source_uri}/{source_table} was encoded by checkpoint {source.checkpoint_id}, not "
                         f"{checkpoint_id}: encode the corpus with this checkpoint first (dvc repro encode)")
    recipe = {"source": f"{source_uri}/{source_table}", "checkpoint_id": checkpoint_id, "source_rows": len(source),
              "units": units, "sigma": sigma, "seed": seed, "ann_min_rows": ann_min_rows}
    manifest = Path(uri) / "serve_rag_corpus.json"
    if manifest.is_file() and json.loads(manifest.read_text())["recipe"] == recipe:
        return json.loads(manifest.read_text())
    shutil.rmtree(uri, ignore_errors=True)
    records = source.records()
    arrow = source.table.to_arrow()
    vectors = np.asarray(arrow.column("vector").combine_chunks().flatten(), np.float32).reshape(-1, source.dim)
    copies = copies_for(len(records), units)
    mini = minilm.index(records).vectors  # (n_real, 384): MiniLM's vectors of `title: text`, as the evaluate stage
    built = {"recipe": recipe, "real_units": len(records), "copies": copies,
             "real_documents": len({r.doc_id for r in records}),
             "onegen": _fill_table(uri, ONEGEN_TABLE, checkpoint_id, records, vectors, copies, sigma, seed,
                                   ann_min_rows),
             "minilm": _fill_table(uri, MINILM_TABLE, "minilm", records, mini, copies, sigma, seed, ann_min_rows)}
    manifest.write_text(json.dumps(built, indent=2))
    return built


# ------------------------------------------------------------------------------------------ retrievers

class GritEncoder:
    """The same LLM re-encoding query texts in one padded pass, no KV cache: per text the ids
    `prompt(question_prompt(text)) + [RQ]`, the vector is the [RQ] position's last hidden state."""

    def __init__(self, lm, tokenizer) -> None:
        self.lm = getattr(lm, "lm", lm)
        self.seg = SegmentTokenizer(tokenizer)
        self.rq = SpecialTokenIds.from_tokenizer(tokenizer).rq
        self.passes = 0
        self.tokens = 0

    def ids(self, text: str) -> list[int]:
        return self.seg.prompt(question_prompt(text)) + [self.rq]

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows = [self.ids(t) for t in texts]
        width = max(len(r) for r in rows)
        device = next(self.lm.parameters()).device
        ids = torch.full((len(rows), width), self.seg.ids.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # right-padded: positions count from 0 in every row
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        hidden = self.lm.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       use_cache=False).last_hidden_state  # (rows, width, dim)
        last = torch.tensor([len(r) - 1 for r in rows], device=device)
        vecs = torch.nn.functional.normalize(hidden[torch.arange(len(rows), device=device), last].float(), dim=-1)
        self.passes += 1
        self.tokens += sum(len(r) for r in rows)
        return vecs.cpu().numpy()


class MiniLMBatch:
    """MiniLM's vectors of a step's query texts in one call, counted like `GritEncoder`."""

    def __init__(self, minilm) -> None:
        self.minilm = minilm
        self.passes = 0
        self.tokens = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        p, t = self.minilm.forward_passes, self.minilm.tokens
        vecs = self.minilm.encode(list(texts))  # (n, 384)
        self.passes += self.minilm.forward_passes - p
        self.tokens += self.minilm.tokens - t
        return vecs


class RetrieverBridge:
    """Stands where the engine expects the index. `query_encoder(row, seq)` records the row's sequence up
    to its [RQ] (a placeholder vector goes back); `search` turns the recorded rows into query texts,
    encodes them in one call of `encode` and searches `index` with those vectors (same k, same exclusions).
    `checkpoint_id` is the served checkpoint's (the engine checks it); `index` carries its own."""

    def __init__(self, name: str, to_text: Callable[[list[int]], str], encode, index, checkpoint_id: str) -> None:
        self.name, self.to_text, self.encode, self.index = name, to_text, encode, index
        self.checkpoint_id = checkpoint_id
        self.dim = index.dim
        self.pending: list[list[int]] = []
        self.queries = 0
        self.searches = 0  # search calls (one per engine step with retrievals)

    def query_encoder(self, row: int, seq: list[int]) -> np.ndarray:
        self.pending.append(list(seq))
        return np.ones(1, np.float32)

    def search(self, queries: np.ndarray, k: int, allowed=None, exclude=None):
        if len(self.pending) != len(queries):
            raise RuntimeError(f"{self.name}: {len(self.pending)} query texts recorded for {len(queries)} searches")
        texts = [self.to_text(seq) for seq in self.pending]
        self.pending = []
        self.queries += len(texts)
        self.searches += 1
        return self.index.search(self.encode(texts), k, allowed, exclude)

    def counts(self) -> dict:
        return {"retriever_queries": self.queries, "retriever_calls": self.searches,
                "retriever_passes": self.encode.passes, "retriever_tokens": self.encode.tokens}


@contextlib.contextmanager
def query_encoder_in_service(query_encoder):
    """Bind `query_encoder` into the `generate` call `ModelService.run_ask` makes, for the duration."""
    import tasks.serving.service as service_module

    original = service_module.generate
    if isinstance(original, functools.partial):
        raise RuntimeError("a query encoder is already bound into the service's generate")
    service_module.generate = functools.partial(original, query_encoder=query_encoder)
    try:
        yield
    finally:
        service_module.generate = original


class BaselineService:
    """A `ModelService` whose [RQ] queries go to `bridge`: the same model, tokenizer, lock and `run_ask`
    (a shallow copy with `units` replaced), its generate call given the bridge's query encoder."""

    def __init__(self, service, bridge: RetrieverBridge) -> None:
        self.view = copy.copy(service)
        self.view.units = bridge
        self.bridge = bridge

    def run_ask(self, items):
        with query_encoder_in_service(self.bridge.query_encoder):
            return self.view.run_ask(items)


def parameter_bytes(module: torch.nn.Module) -> dict:
    """Parameters and buffers of a module: count and bytes as held in memory."""
    params = list(module.parameters())
    return {"parameters": sum(p.numel() for p in params),
            "bytes": sum(p.numel() * p.element_size() for p in params)
            + sum(b.numel() * b.element_size() for b in module.buffers())}
