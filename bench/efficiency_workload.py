"""The Fig. 3 workloads of `bench/efficiency.py`: one scripted dialogue or linking run per method, and a
log of every model call it makes.

Each function here runs one method once and returns what it cost: wall time, the engine's counts, and
the decoder calls seen by forward hooks on the generator's decoder and on the retriever model (so a
pass that the engine's own counters miss is still counted). The tokens are scripted, as the paper's
benchmark generates random tokens (optimum-benchmark), so an untrained model runs exactly the paper's
workload and every method feeds the same tokens except where its retrieval mechanics differ.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from onegen_core.config import LossConfig
from onegen_core.data import load_passages
from onegen_core.inference.document_encoding import encode_documents
from onegen_core.inference.generation import EngineStats, RetrievalPolicy, default_paste, generate
from onegen_core.inference.index import ExactIndex, Hit, UnitRecord
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.segments import Document
from onegen_core.method.tokens import MENTION_CLOSE, MENTION_OPEN, SpecialTokenIds

RAG_METHODS = ("onegen", "grit", "pipeline", "lower")
# (c): the pipeline's extraction is token for token the lower bound's run (H.4.1: OneGen's output is the
# extraction output plus 2 tokens a mention), so the pipeline is timed as "lower" + "linking"
EL_METHODS = ("onegen", "lower", "linking")
DOC_TOKENS = 30  # F.5.1: a retrieved document of 30 tokens (pasted inside <paragraph>…</paragraph>)
EXTRACT_INSTRUCTION = 15  # H.4.1: extraction and linking instructions of 15 tokens each
LINK_INSTRUCTION = 15  # the mention's 2 tokens + 13 instruction tokens
CANDIDATES, CANDIDATE_TOKENS = 4, 30  # H.4.1: four candidates of 30 tokens each


@dataclass
class Workload:
    """Everything the methods share for one generator: tokens to draw from, documents, both indexes."""

    lm: torch.nn.Module
    tok: object
    ids: SpecialTokenIds
    pool: list[int]  # ordinary token ids of real text (queries, outputs, sentences, candidates)
    records: list[UnitRecord]  # the documents, each pasting to the same number of tokens
    index: ExactIndex  # the generator's own [RD] vectors of the documents (OneGen, GRIT)
    mini_index: ExactIndex  # MiniLM vectors of the same documents (the pipeline)
    minilm: object  # tasks.adapters.baselines.MiniLMEncoder
    paste_len: int  # tokens of one pasted document


def ordinary_tokens(tok, texts: list[str], ids: SpecialTokenIds) -> list[int]:
    special = set(ids.ids.values()) | {ids.eos, ids.pad} | set(getattr(tok, "all_special_ids", []))
    out: list[int] = []
    for t in texts:
        out += [i for i in tok(t, add_special_tokens=False)["input_ids"] if i not in special]
    return out


def paste_tokens(tok, record: UnitRecord) -> list[int]:
    hit = Hit(record.id, 0.0, record.doc_id, record.title, record.text, record.doc_text)
    return tok(default_paste(hit), add_special_tokens=False)["input_ids"]


def build_workload(lm, tok, minilm, corpus, n_docs: int, seed: int = 0) -> Workload:
    """Documents are the first 30 tokens of real passages; only those whose pasted form has the most
    common length are kept, so every method pastes exactly as many tokens per retrieval."""
    ids = SpecialTokenIds.from_tokenizer(tok)
    passages = load_passages(corpus)
    random.Random(seed).shuffle(passages)
    pool = ordinary_tokens(tok, [p.text for p in passages[:400]], ids)
    docs = []
    for p in passages[400:400 + 2 * n_docs]:
        piece = tok.decode(tok(p.text, add_special_tokens=False)["input_ids"][:DOC_TOKENS]).strip()
        docs.append(Document(f"doc{len(docs)}", (piece,), title=""))
    model = OneGenModel(lm, LossConfig()).eval()
    recs: list[UnitRecord] = []
    vecs = []
    with torch.no_grad():
        for r, v in encode_documents(model, OneGenCollator(tok, max_length=64), docs, batch_size=32):
            recs += r
            vecs.append(v)
    lengths = [len(paste_tokens(tok, r)) for r in recs]
    paste_len = Counter(lengths).most_common(1)[0][0]
    keep = [i for i, n in enumerate(lengths) if n == paste_len][:n_docs]
    recs = [recs[i] for i in keep]
    index = ExactIndex(recs, np.concatenate(vecs)[keep], "bench")
    return Workload(lm, tok, ids, pool, recs, index, minilm.index(recs), minilm, paste_len)


# ---------------------------------------------------------------------------------------------------------
# Counting model calls


@dataclass
class Call:
    """One forward call of a model, as a pre-hook saw it."""

    model: str  # "generator" (the LLM's decoder) or "retriever" (the pipeline's MiniLM)
    width: int  # input tokens per row, padding included
    rows: int
    separate: bool  # called with use_cache=False: a pass outside the engine's KV cache (GRIT, linking)
    start: float  # time.perf_counter() at the call


class CallLog:
    """Forward pre-hooks on the generator's decoder (and the retriever's model, if any) that log every
    call; `with CallLog(lm, retriever) as log:` installs them for the block."""

    def __init__(self, lm: torch.nn.Module, retriever: torch.nn.Module | None = None) -> None:
        self.modules = {"generator": lm.get_decoder()}
        if retriever is not None:
            self.modules["retriever"] = retriever
        self.calls: list[Call] = []
        self._handles: list = []

    def _hook(self, name: str):
        def pre(module, args, kwargs):
            x = kwargs.get("input_ids", args[0] if args else None)  # (rows, width)
            self.calls.append(Call(name, int(x.shape[1]), int(x.shape[0]), kwargs.get("use_cache") is False,
                                   time.perf_counter()))
        return pre

    def __enter__(self) -> "CallLog":
        self._handles = [m.register_forward_pre_hook(self._hook(n), with_kwargs=True) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def count(self, model: str, separate: bool | None = None) -> int:
        return len(self.select(model, separate))

    def select(self, model: str, separate: bool | None = None) -> list[Call]:
        return [c for c in self.calls if c.model == model and (separate is None or c.separate == separate)]

    def decode_step_seconds(self) -> list[float]:
        """Wall time of each engine decode step: from one single-token generator pass to the next, when both
        are single-token passes in the KV cache (the whole step: decoder, LM head, choice, bookkeeping)."""
        engine = self.select("generator", separate=False)
        return [b.start - a.start for a, b in zip(engine, engine[1:]) if a.width == 1 and b.width == 1 and a.rows == 1]


@dataclass
class Run:
    """One method run once: its wall time, the engine's counts and every model call."""

    method: str
    seconds: float
    stats: EngineStats
    log: CallLog
    retrievals: int
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Scripted generation


def take(pool: list[int], n: int, rng: random.Random) -> list[int]:
    start = rng.randrange(0, len(pool) - n)
    return pool[start:start + n]


def scripted(steps: list):
    """A chooser that plays `steps`: a token id (one decode step) or a list of ids (one chunk)."""
    it = iter(steps)
    return lambda row, logits, seq: next(it)


def grit_encoder(w: Workload, queries: list[list[int]]) -> Callable[[int, list[int]], np.ndarray]:
    """GRIT (§4.3.1, App. F.5.1): the same LLM encodes the round's query text in a second forward pass,
    without the KV cache and without [RQ]; mean pooling of the last layer, as GritLM pools."""
    decoder = w.lm.get_decoder()
    done = [0]

    def encode(row: int, seq: list[int]) -> np.ndarray:
        q = queries[done[0]]
        done[0] += 1
        if seq[-1] != w.ids.rq or seq[-1 - len(q):-1] != q:
            raise AssertionError("GRIT's query is not the round's query right before [RQ]")
        x = torch.tensor([q])  # (1, query tokens)
        h = decoder(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).last_hidden_state[0]
        return F.normalize(h.float().mean(0), dim=-1).numpy()

    return encode


def pipeline_encoder(w: Workload, queries: list[list[int]]) -> Callable[[int, list[int]], np.ndarray]:
    """The pipeline: a separate retriever (MiniLM) encodes the round's query text."""
    done = [0]

    def encode(row: int, seq: list[int]) -> np.ndarray:
        q = queries[done[0]]
        done[0] += 1
        return w.minilm.encode([w.tok.decode(q)])[0]

    return encode


def rag_script(w: Workload, method: str, rounds: int, qlen: int, out_len: int, seed: int):
    """(prompt, steps, queries) of one dialogue: each round a `qlen`-token query (the round's instruction),
    then a retrieval ([RQ] for onegen/grit/pipeline: the token that asks for retrieval; the lower bound
    pastes the passage for free), the `paste_len`-token passage, and `out_len` output tokens."""
    rng = random.Random(seed)
    prompt = take(w.pool, 8, rng)
    steps: list = []
    queries: list[list[int]] = []
    for r in range(rounds):
        query = take(w.pool, qlen, rng)
        queries.append(query)
        steps.append(query)
        if method == "lower":
            steps.append(paste_tokens(w.tok, w.records[r % len(w.records)]))
        else:
            steps.append(w.ids.rq)  # the engine searches and pastes the passage itself
        steps += take(w.pool, out_len, rng)
    steps.append(w.ids.eos)
    return prompt, steps, queries


def run_rag(method: str, w: Workload, rounds: int, qlen: int, out_len: int, seed: int) -> Run:
    """One dialogue of `rounds` rounds, batch 1, by `method` (one of RAG_METHODS)."""
    prompt, steps, queries = rag_script(w, method, rounds, qlen, out_len, seed)
    policy = RetrievalPolicy(mode="rag", max_retrievals=rounds, max_new_tokens=10**6)
    encoder = {"grit": grit_encoder, "pipeline": pipeline_encoder}.get(method)
    index = {"onegen": w.index, "grit": w.index, "pipeline": w.mini_index}.get(method)
    stats = EngineStats()
    with CallLog(w.lm, w.minilm.model if method == "pipeline" else None) as log:
        t0 = time.perf_counter()
        res = generate(w.lm, w.tok, [prompt], index, policy, choose=scripted(steps),
                       query_encoder=encoder(w, queries) if encoder else None,
                       paste_without_search=(lambda b, n: None) if index is None else None, stats=stats)
        seconds = time.perf_counter() - t0
    n_ret = len(res[0].retrievals) if method != "lower" else rounds
    if method != "lower" and n_ret != rounds:
        raise AssertionError(f"{method}: {n_ret} retrievals in {rounds} rounds")
    return Run(method, seconds, stats, log, n_ret, {"query_tokens": qlen})


def el_script(w: Workload, sentence_len: int, mentions: int, seed: int):
    """(prompt, sentence, spans): the extraction prompt (sentence + 15-token instruction, H.4.1) and the
    start of each two-token mention in the sentence."""
    rng = random.Random(seed)
    sentence = take(w.pool, sentence_len, rng)
    spans = sorted(rng.sample(range(0, sentence_len - 2, 2), mentions))
    return sentence + take(w.pool, EXTRACT_INSTRUCTION, rng), sentence, spans


def el_steps(w: Workload, method: str, sentence: list[int], spans: list[int]) -> list:
    """The sentence re-generated token by token with every mention marked; OneGen adds [RQ] after each
    mention, which the engine feeds together with <CON> in one pass (link mode)."""
    m_open, m_close = w.ids[MENTION_OPEN], w.ids[MENTION_CLOSE]
    steps: list = []
    pos = 0
    for s in spans:
        steps += sentence[pos:s] + [m_open, *sentence[s:s + 2], m_close]
        if method == "onegen":
            steps.append(w.ids.rq)
        pos = s + 2
    return steps + sentence[pos:] + [w.ids.eos]


def linking_prompts(w: Workload, sentence: list[int], spans: list[int], seed: int) -> list[list[int]]:
    """The pipeline's linking stage (EntGPT as in H.4.1): per mention one QA prompt of the sentence, a
    15-token linking instruction naming the mention, and four 30-token candidate descriptions (from an
    alias table: no model call)."""
    rng = random.Random(seed + 1)
    out = []
    for s in spans:
        instruction = sentence[s:s + 2] + take(w.pool, LINK_INSTRUCTION - 2, rng)
        cands = [t for _ in range(CANDIDATES) for t in take(w.pool, CANDIDATE_TOKENS, rng)]
        out.append(sentence + instruction + cands)
    return out


def run_el(method: str, w: Workload, sentence_len: int, mentions: int, seed: int) -> Run:
    """(c) by `method` (one of EL_METHODS): "onegen" links while it generates; "lower" generates the marked
    sentence with no linking (the pipeline's extraction); "linking" is the pipeline's second stage, one
    QA prompt a mention with a single output token (the argmax of the prompt's last logits)."""
    prompt, sentence, spans = el_script(w, sentence_len, mentions, seed)
    stats = EngineStats()
    with CallLog(w.lm) as log:
        t0 = time.perf_counter()
        if method == "linking":
            decoder, head = w.lm.get_decoder(), w.lm.get_output_embeddings()
            for qa in linking_prompts(w, sentence, spans, seed):
                x = torch.tensor([qa])  # (1, sentence + 15 + 4 * 30)
                h = decoder(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).last_hidden_state
                int(head(h[:, -1]).argmax(-1))  # the single output token: which candidate
                stats.forward_passes += 1
                stats.tokens_processed += x.shape[1]
        else:
            policy = RetrievalPolicy(mode="link", max_retrievals=mentions, max_new_tokens=10**6)
            generate(w.lm, w.tok, [prompt], w.index if method == "onegen" else None, policy,
                     choose=scripted(el_steps(w, method, sentence, spans)), stats=stats)
        seconds = time.perf_counter() - t0
    return Run(method, seconds, stats, log, mentions, {"sentence_tokens": sentence_len})
