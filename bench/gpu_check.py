"""A GPU check, ready for when one is lent: one script, ≤ 8 minutes on one CUDA GPU, needing only torch,
transformers and `onegen_core` (peft for the LoRA row, when installed). No `tasks.*`, LanceDB, Ray,
DeepSpeed, MLflow or model hub: every model is randomly initialised from a config.

(b) first, Training memory: the peak GPU memory (`torch.cuda.max_memory_allocated`, weights included) of one
    OneGen training step of a Qwen2-1.5B-shaped model (1,536 wide, 28 layers, 12 heads / 2 KV heads,
    8,960 MLP, 151,936-row tied vocabulary: 1.54B parameters): the forward pass with both losses
    (`OneGenModel`, BPR), backward and an AdamW step, run by the core's own step functions
    (`forward_backward`, `make_optimizer`, `local_ops`). Rows: full fine-tuning, the top 12 of 28 layers
    (`OneGenModel.train_top_layers`, the ratio of params.yaml's 12 of 30; its lower-state cache holds this
    step's sequences), LoRA (`onegen_core.method.lora`, r 16 on every linear layer; skipped, and said so,
    when peft is absent), each in two precisions: `bf16` (bf16 weights, gradients and AdamW state, no
    autocast: the paper profile's single-process form) and `fp32-autocast` (fp32 weights and AdamW state,
    bf16 autocast). The batch, as the paper trains Qwen2-1.5B (App. G.1 and Table 10): 2 sequences a GPU
    of 1,100 tokens (the max length), each with 2 [RQ] and 66 GEN tokens; per example 6 paragraphs of
    160 tokens with 5 [RD] each (2 gold + the profile's 4 distractors), 2 positives a query and 4
    negatives a positive; the other examples' units are negatives too.
(a) Fig. 3 (§4.3.1, App. F.5.1) on the same shape in bf16, eval mode: multi-round RAG dialogues with
    scripted tokens (a random model exercises the same work as a trained one): each round feeds a query
    chunk of L tokens, retrieves a 30-token document, then generates 10 tokens. Setting (a): 5 rounds, L
    in 25/100/400; setting (b): 10 and 30 rounds with L = 100. Methods: onegen ([RQ] is one decode step,
    its hidden state searches the index), grit (the same LLM re-encodes only the round's query text and
    its [RQ], L + 1 tokens, in a second pass without the cache), pipeline_minilm / pipeline_contriever
    (a BERT of MiniLM-L6 size, 22.7M parameters = 1.5 % of the generator like the paper's Contriever
    against Mistral-7B, or of Contriever size, 109M, encodes the query; no [RQ] step), lower (no
    retrieval: the document is pasted, no [RQ], no search). The index is exact (a torch matrix product on
    the device) over 100,000 random unit vectors. Methods are interleaved in a rotated order, `repeats`
    times after one warm-up, and every ratio is per repeat with median [min, max]. Counts per method are
    exact: decoder calls of the generator and of the retriever (forward hooks), tokens fed, searches.
    The physical limit: OneGen's extra time per retrieval over the lower bound divided by one decode step
    (one token on a cache of the dialogue's middle length, head and argmax included) plus one search,
    both measured in the same run. Points that would not fit the time budget (`--budget-s`) are skipped
    and listed.
Absolute times mean something only on a GPU; `--shape tiny` runs the same code on a CPU in seconds (the
test runs it so, so it cannot rot). Writes `--out` (default metrics/gpu_check.json).

    python -m bench.gpu_check                 # on a CUDA machine: ~6-7 min
    python -m bench.gpu_check --shape tiny    # anywhere: seconds
"""
from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import platform
import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from onegen_core.config import LoraSettings, LossConfig, TinyBackboneConfig, TrainConfig
from onegen_core.inference.generation import EngineStats, RetrievalPolicy, default_paste, generate
from onegen_core.inference.index import Hit, UnitRecord
from onegen_core.method.backbone import build_tiny_backbone, train_bpe_tokenizer
from onegen_core.method.collator import Batch
from onegen_core.method.model import OneGenModel
from onegen_core.method.tokens import SPECIAL_TOKENS, SpecialTokenIds

ROOT = Path(__file__).resolve().parents[1]
DOC_TOKENS, OUT_TOKENS, PROMPT_TOKENS, RAG_A_ROUNDS = 30, 10, 100, 5


@dataclass(frozen=True)
class BertShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int = 30522


@dataclass(frozen=True)
class Shape:
    name: str
    generator: TinyBackboneConfig
    vocab: int  # rows of the generator's embedding (at least the tokenizer's)
    retrievers: dict = field(default_factory=dict)  # name -> BertShape
    query_lengths: tuple = ()  # Fig. 3(a): L, 5 rounds
    rounds: tuple = ()  # Fig. 3(b): rounds at L = query_length_b
    query_length_b: int = 100
    docs: int = 100_000
    repeats: int = 3
    # one training step (Table 10 / App. G.1)
    batch_size: int = 2
    max_length: int = 1100
    docs_per_example: int = 6
    doc_length: int = 160
    units_per_doc: int = 5
    queries_per_row: int = 2
    gen_per_row: int = 66
    trainable_layers: int = 12


SHAPES = {
    "qwen2-1.5b": Shape(
        "qwen2-1.5b", TinyBackboneConfig(architecture="qwen2", hidden_size=1536, intermediate_size=8960, num_layers=28,
                                         num_heads=12, num_kv_heads=2, max_position_embeddings=32768),
        vocab=151_936, retrievers={"minilm": BertShape(384, 6, 12, 1536), "contriever": BertShape(768, 12, 12, 3072)},
        query_lengths=(25, 100, 400), rounds=(10, 30)),
    "tiny": Shape(
        "tiny", TinyBackboneConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                                   max_position_embeddings=4096),
        vocab=0, retrievers={"minilm": BertShape(32, 2, 4, 64, 512), "contriever": BertShape(48, 2, 4, 96, 512)},
        query_lengths=(8, 16), rounds=(3,), query_length_b=12, docs=500, repeats=2, max_length=48,
        docs_per_example=3, doc_length=16, units_per_doc=2, gen_per_row=8, trainable_layers=1),
}
PRECISIONS = {"bf16": (torch.bfloat16, "none"), "fp32-autocast": (torch.float32, "bfloat16")}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def char_tokenizer():
    """One token per ASCII character, the OneGen tokens atomic: token counts are character counts."""
    return train_bpe_tokenizer(["abc"], vocab_size=258, min_frequency=1)


def build_generator(shape: Shape, vocab: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The random Qwen2 of `shape`, built on `device` (float32 init, then cast: as a checkpoint loads)."""
    with torch.device(device):
        lm = build_tiny_backbone(shape.generator, max(shape.vocab, vocab), seed=0)
    return lm.to(dtype)


def n_params(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


# ------------------------------------------------------------------------------------------ (b) memory

def synthetic_batch(shape: Shape, ids: SpecialTokenIds, letters: list[int], seed: int = 0) -> Batch:
    """One micro-batch of the stated shape: random letters, [RQ] evenly spaced in each row, GEN labels on
    the [RQ]s and the last tokens, [RD] ending each sentence of each paragraph; the query of hop k of
    example e has the units of paragraph k of e as positives and every other unit of the batch as negatives."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.tensor(letters)
    b, n, q = shape.batch_size, shape.max_length, shape.queries_per_row
    input_ids = pick[torch.randint(len(letters), (b, n), generator=g)]
    labels = torch.full((b, n), -100)
    labels[:, n - shape.gen_per_row + q:] = input_ids[:, n - shape.gen_per_row + q:]
    rq_at = [n * (k + 1) // (q + 2) for k in range(q)]
    input_ids[:, rq_at] = ids.rq
    labels[:, [p - 1 for p in rq_at]] = ids.rq  # the position before [RQ] predicts it
    d, m, u = b * shape.docs_per_example, shape.doc_length, shape.units_per_doc
    doc_ids = pick[torch.randint(len(letters), (d, m), generator=g)]
    rd_at = [m * (k + 1) // u - 1 for k in range(u)]
    doc_ids[:, rd_at] = ids.rd
    doc_index = torch.tensor([(r, p) for r in range(d) for p in rd_at])
    unit_doc = doc_index[:, 0]  # (n_units,)
    unit_example = unit_doc // shape.docs_per_example
    query_index = torch.tensor([(r, p) for r in range(b) for p in rq_at])
    gold_doc = torch.tensor([r * shape.docs_per_example + k for r in range(b) for k in range(q)])
    positive = unit_doc[None, :] == gold_doc[:, None]  # (n_queries, n_units)
    own = unit_example[None, :] == query_index[:, 0][:, None]
    return Batch(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels,
                 roles=torch.zeros_like(input_ids), doc_input_ids=doc_ids, doc_attention_mask=torch.ones_like(doc_ids),
                 query_index=query_index, doc_index=doc_index, positive_mask=positive, negative_mask=~positive,
                 own_mask=own, query_ids=[f"e{r}/q{k}" for r in range(b) for k in range(q)],
                 unit_ids=[f"d{r}/u{k}" for r, k in doc_index.tolist()],
                 unit_docs=[f"d{r}" for r in unit_doc.tolist()])


def wrap_for(mode: str, lm: torch.nn.Module, shape: Shape, ids: SpecialTokenIds, compute: torch.dtype) -> OneGenModel:
    loss = LossConfig(kind="bpr", positives_per_query=2, negatives_per_positive=4)  # Table 10, Qwen2-1.5B
    if mode == "lora":
        from onegen_core.method.lora import apply_lora

        lm = apply_lora(lm, LoraSettings(), [ids[t] for t in SPECIAL_TOKENS])
    model = OneGenModel(lm, loss).train()
    if mode == "top_k":
        model.train_top_layers(shape.trainable_layers, compute)
    return model


def train_step_row(shape: Shape, mode: str, precision: str, device: torch.device, tok) -> dict:
    """Peak memory, sizes and time of one training step in `mode` and `precision` (an OOM is a result)."""
    from onegen_core.training.loop import forward_backward, local_ops, make_optimizer

    row: dict = {"mode": mode, "precision": precision}
    if mode == "lora" and importlib.util.find_spec("peft") is None:
        return {**row, "skipped": "peft is not installed"}
    weights, autocast = PRECISIONS[precision]
    ids = SpecialTokenIds.from_tokenizer(tok)
    model = wrap_for(mode, build_generator(shape, len(tok), device, weights), shape, ids,
                     torch.bfloat16 if autocast == "bfloat16" or weights == torch.bfloat16 else torch.float32)
    cfg = TrainConfig(lr=2e-5, weight_decay=0.0, batch_size=shape.batch_size, max_length=shape.max_length,
                      autocast=autocast)
    optimizer = make_optimizer(model, cfg)
    ops = local_ops(model, optimizer, cfg)
    batch = synthetic_batch(shape, ids, letter_ids(tok)).to(device)
    row.update(parameters=n_params(model), trainable_parameters=n_params(model, trainable=True),
               parameter_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
               tokens=batch.n_tokens, gen_tokens=batch.n_gen_tokens)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    try:
        tot = forward_backward(model, [(0, batch)], 0, 0, ops.backward, autocast=autocast)
        row["grad_norm"] = round(ops.step(0, cfg.lr), 4)
        row.update(loss=round(tot["loss"], 4), oom=False)
    except torch.cuda.OutOfMemoryError as e:
        row.update(oom=True, error=str(e).splitlines()[0])
    sync(device)
    row["step_seconds"] = round(time.perf_counter() - t0, 3)
    row["optimizer_state_bytes"] = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                                       for t in s.values() if torch.is_tensor(t))
    cache = model.lower_cache
    row["lower_cache_bytes"] = sum(s.numel() * s.element_size() for s in cache.states.values()) if cache else 0
    row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    row["peak_gpu_gib"] = round(row["peak_gpu_bytes"] / 2**30, 2) if row["peak_gpu_bytes"] is not None else None
    del model, optimizer, ops, batch
    release(device)
    return row


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def train_memory(shape: Shape, device: torch.device, tok, modes, precisions) -> dict:
    rows = []
    for precision in precisions:
        for mode in modes:
            row = train_step_row(shape, mode, precision, device, tok)
            rows.append(row)
            print(f"  train step {mode:>6} {precision:>13}: " + (row.get("skipped") or
                  f"peak {row['peak_gpu_gib']} GiB, {row['trainable_parameters']:,} of {row['parameters']:,} "
                  f"parameters trained, {row['step_seconds']} s{' (OOM)' if row['oom'] else ''}"), flush=True)
    batch = {k: getattr(shape, k) for k in ("batch_size", "max_length", "docs_per_example", "doc_length",
                                            "units_per_doc", "queries_per_row", "gen_per_row", "trainable_layers")}
    return {"batch": batch, "loss": "bpr, 2 positives a query, 4 negatives a positive (Table 10, Qwen2-1.5B)",
            "optimizer": "torch AdamW (make_optimizer), grad clip 1.0", "rows": rows}


# ------------------------------------------------------------------------------------------ (a) Fig. 3

class TorchIndex:
    """Exact cosine search over (n, dim) unit vectors on the model's device (the VectorIndex protocol)."""

    def __init__(self, records: list[UnitRecord], vectors: torch.Tensor, checkpoint_id: str = "gpu-check") -> None:
        self.records, self.checkpoint_id = records, checkpoint_id
        self.vectors = F.normalize(vectors.float(), dim=-1)  # (n, dim)
        self.dim = int(vectors.shape[1])
        self.row_of = {r.doc_id: i for i, r in enumerate(records)}

    def search(self, queries, k: int, allowed=None, exclude=None) -> list[list[Hit]]:
        if allowed is not None:
            raise ValueError("TorchIndex searches the whole corpus (no allowed sets)")
        q = torch.as_tensor(np.asarray(queries, np.float32), device=self.vectors.device)
        scores = q @ self.vectors.T  # (n_queries, n)
        for i, ex in enumerate(exclude or []):
            if ex:
                scores[i, [self.row_of[d] for d in ex if d in self.row_of]] = float("-inf")
        top = scores.topk(k, dim=1)
        vals, rows = top.values.cpu().tolist(), top.indices.cpu().tolist()
        return [[self._hit(j, s) for j, s in zip(rj, vj)] for rj, vj in zip(rows, vals)]

    def _hit(self, j: int, score: float) -> Hit:
        r = self.records[j]
        return Hit(r.id, score, r.doc_id, r.title, r.text, r.doc_text)


@dataclass
class Workbench:
    """What every dialogue of one run reads: the generator, its index, the retrievers and their indexes."""

    lm: torch.nn.Module
    tok: object
    ids: SpecialTokenIds
    letters: list[int]
    index: TorchIndex
    retrievers: dict  # name -> (BERT model, its TorchIndex)
    device: torch.device
    calls: Counter = field(default_factory=Counter)  # forward calls per model (hooks)


def letter_ids(tok) -> list[int]:
    return tok("abcdefghijklmnopqrstuvwxyz", add_special_tokens=False)["input_ids"]


def random_corpus(n: int, rng: random.Random) -> list[UnitRecord]:
    texts = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(DOC_TOKENS)) for _ in range(n)]
    return [UnitRecord(f"d{i}", f"d{i}", "", t, t) for i, t in enumerate(texts)]


def build_workbench(shape: Shape, device: torch.device, dtype: torch.dtype, tok) -> Workbench:
    from transformers import BertConfig, BertModel

    lm = build_generator(shape, len(tok), device, dtype).eval()
    records = random_corpus(shape.docs, random.Random(0))
    g = torch.Generator(device="cpu").manual_seed(0)
    index = TorchIndex(records, torch.randn(shape.docs, shape.generator.hidden_size, generator=g).to(device))
    retrievers = {}
    for name, s in shape.retrievers.items():
        with torch.device(device):
            bert = BertModel(BertConfig(hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
                                        intermediate_size=s.intermediate, vocab_size=s.vocab), add_pooling_layer=False)
        vecs = torch.randn(shape.docs, s.hidden, generator=g).to(device)
        retrievers[name] = (bert.to(dtype).eval(), TorchIndex(records, vecs, name))
    wb = Workbench(lm, tok, SpecialTokenIds.from_tokenizer(tok), letter_ids(tok), index, retrievers, device)
    for name, module in [("generator", lm.get_decoder())] + [(n, m) for n, (m, _) in retrievers.items()]:
        module.register_forward_hook(lambda *_, name=name: wb.calls.update([name]))
    return wb


def scripted(steps: list):
    """A chooser playing `steps` (a token id, a chunk of ids, or a callable of the sequence giving either).
    It reads the logits' argmax first, as a real greedy sampler does (and waits for the device so)."""
    it = iter(steps)

    def choose(row, logits, seq):
        int(logits.argmax())
        step = next(it)
        return step(seq) if callable(step) else step

    return choose


def paste_ids(wb: Workbench, hit: Hit) -> list[int]:
    return wb.tok(default_paste(hit), add_special_tokens=False)["input_ids"]


def grit_encoder(wb: Workbench, query_len: int, stats: EngineStats):
    """GRIT-style: the same LLM re-encodes the round's query and its [RQ] (L + 1 tokens), no cache."""
    decoder = wb.lm.get_decoder()

    def encode(row: int, seq: list[int]) -> np.ndarray:
        x = torch.tensor([seq[-(query_len + 1):]], device=wb.device)
        h = decoder(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).last_hidden_state[0, -1]
        stats.query_encoder_passes += 1
        stats.query_encoder_tokens += x.shape[1]
        return F.normalize(h.float(), dim=-1).cpu().numpy()

    return encode


def pipeline_paste(wb: Workbench, name: str, query: list[int], stats: EngineStats, seq: list[int]) -> list[int]:
    """The pipeline's retrieval: its BERT encodes [CLS] query [SEP] (mean pooling), its index is searched,
    the best document is pasted (fed as a chunk, with no [RQ] step)."""
    bert, index = wb.retrievers[name]
    x = torch.tensor([[1] + [t % bert.config.vocab_size for t in query] + [2]], device=wb.device)
    h = bert(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state.mean(1)  # (1, hidden)
    hit = index.search(F.normalize(h.float(), dim=-1).cpu().numpy(), 1)[0][0]
    stats.query_encoder_passes += 1
    stats.query_encoder_tokens += x.shape[1]
    stats.searches += 1
    return paste_ids(wb, hit)


def dialogue(wb: Workbench, method: str, rounds: int, query_len: int, seed: int) -> dict:
    """One scripted dialogue; the same tokens for every method of a seed. Wall time and exact counts."""
    rng, doc_rng = random.Random(seed), random.Random(seed + 1)
    stats = EngineStats()
    steps: list = []
    for _ in range(rounds):
        query = [rng.choice(wb.letters) for _ in range(query_len)]
        steps.append(query)
        if method in ("onegen", "grit"):
            steps.append(wb.ids.rq)  # the engine searches with [RQ] (or GRIT's vector) and pastes
        elif method == "lower":
            steps.append(paste_ids(wb, wb.index._hit(doc_rng.randrange(len(wb.index.records)), 0.0)))
        else:
            steps.append(functools.partial(pipeline_paste, wb, method.removeprefix("pipeline_"), query, stats))
        steps += [rng.choice(wb.letters) for _ in range(OUT_TOKENS)]
    steps.append(wb.ids.eos)
    prompt = [rng.choice(wb.letters) for _ in range(PROMPT_TOKENS)]
    index = wb.index if method in ("onegen", "grit") else None
    before = Counter(wb.calls)
    sync(wb.device)
    t0 = time.perf_counter()
    generate(wb.lm, wb.tok, [prompt], index, RetrievalPolicy(max_retrievals=rounds, max_new_tokens=10**6),
             choose=scripted(steps), query_encoder=grit_encoder(wb, query_len, stats) if method == "grit" else None,
             paste_without_search=None if index else (lambda b, n: None), stats=stats)
    sync(wb.device)
    seconds = time.perf_counter() - t0
    calls = Counter(wb.calls)
    calls.subtract(before)
    return {"seconds": seconds, "generator_calls": calls["generator"],
            "retriever_calls": sum(v for k, v in calls.items() if k != "generator"),
            **{k: getattr(stats, k) for k in ("forward_passes", "query_encoder_passes", "tokens_processed",
                                              "query_encoder_tokens", "searches")}}


def spread(values: list[float], digits: int = 4) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "values": [round(v, digits) for v in values]}


@torch.no_grad()
def step_and_search(wb: Workbench, context: int, n: int = 10) -> tuple[float, float]:
    """Medians of one decode step (one token on a cache of `context` tokens, head and argmax included)
    and of one index search, measured now."""
    decoder, head = wb.lm.get_decoder(), wb.lm.get_output_embeddings()
    x = torch.tensor([[random.Random(1).choice(wb.letters) for _ in range(context)]], device=wb.device)
    cache = decoder(input_ids=x, use_cache=True).past_key_values
    steps, searches = [], []
    q = F.normalize(torch.randn(1, wb.index.dim), dim=-1).numpy()
    for i in range(n):
        t = torch.tensor([[wb.letters[i % len(wb.letters)]]], device=wb.device)
        sync(wb.device)
        t0 = time.perf_counter()
        out = decoder(input_ids=t, past_key_values=cache, use_cache=True)
        int(head(out.last_hidden_state[:, -1]).argmax())
        steps.append(time.perf_counter() - t0)
        cache = out.past_key_values
        t0 = time.perf_counter()
        wb.index.search(q, 1)
        searches.append(time.perf_counter() - t0)
    return statistics.median(steps), statistics.median(searches)


def fig3_point(wb: Workbench, setting: str, x: int, rounds: int, query_len: int, repeats: int) -> dict:
    """Every method `repeats` times, interleaved in a rotated order after one warm-up dialogue."""
    methods = ["onegen", "grit", *[f"pipeline_{n}" for n in wb.retrievers], "lower"]
    dialogue(wb, "onegen", rounds, query_len, seed=x)  # warm-up
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(repeats):
        for m in methods[r % len(methods):] + methods[:r % len(methods)]:
            runs[m].append(dialogue(wb, m, rounds, query_len, seed=x))
    sec = {m: [run["seconds"] for run in runs[m]] for m in methods}
    ratios = {"onegen_over_lower": spread([o / lo for o, lo in zip(sec["onegen"], sec["lower"])]),
              **{f"{m}_over_onegen": spread([a / o for a, o in zip(sec[m], sec["onegen"])])
                 for m in methods if m not in ("onegen", "lower")}}
    context = PROMPT_TOKENS + runs["onegen"][0]["tokens_processed"] // 2  # the dialogue's middle
    step, search = step_and_search(wb, min(context, 4 * PROMPT_TOKENS + rounds * (query_len + 60) // 2))
    limit = [(o - lo) / rounds / (step + search) for o, lo in zip(sec["onegen"], sec["lower"])]
    low = runs["lower"][0]
    counts = {m: {**{k: v for k, v in runs[m][0].items() if k != "seconds"},
                  "extra_calls_per_retrieval_vs_lower": round(
                      (runs[m][0]["generator_calls"] + runs[m][0]["retriever_calls"] - low["generator_calls"]) / rounds, 4)}
              for m in methods}
    return {"setting": setting, "x": x, "rounds": rounds, "query_tokens": query_len,
            "seconds": {m: spread(sec[m]) for m in methods}, "ratios": ratios, "counts": counts,
            "physical_limit": {"ratio": spread(limit), "decode_step_s": round(step, 6), "search_s": round(search, 6),
                               "context_tokens": context,
                               "definition": "(OneGen - lower bound) seconds per retrieval / (one decode step + "
                                             "one search), per repeat"}}


def fig3(wb: Workbench, shape: Shape, deadline: float) -> dict:
    """The grid of settings (a) and (b), skipping points that would end past `deadline` (estimated from
    the seconds per generator call measured so far, times 1.5)."""
    grid = [("a", q, RAG_A_ROUNDS, q) for q in shape.query_lengths]
    grid += [("b", r, r, shape.query_length_b) for r in shape.rounds]
    points, skipped = [], []
    per_call = None
    for setting, x, rounds, q in grid:
        calls = (len(wb.retrievers) + 3) * (shape.repeats + 1) * rounds * (OUT_TOKENS + 3)
        if per_call is not None and time.monotonic() + 1.5 * calls * per_call > deadline:
            skipped.append({"setting": setting, "x": x, "reason": "past the time budget"})
            continue
        t0 = time.monotonic()
        p = fig3_point(wb, setting, x, rounds, q, shape.repeats)
        per_call = (time.monotonic() - t0) / max(1, sum(c["generator_calls"] for c in p["counts"].values())
                                                 * (shape.repeats + 1) / shape.repeats)
        points.append(p)
        r = p["ratios"]
        print(f"  ({setting}) x={x:<4} OneGen/lower {r['onegen_over_lower']['median']:.3f}  GRIT/OneGen "
              f"{r['grit_over_onegen']['median']:.3f}  " + "  ".join(
                  f"{k.removesuffix('_over_onegen')}/OneGen {v['median']:.3f}" for k, v in r.items()
                  if k.startswith("pipeline")) + f"  limit {p['physical_limit']['ratio']['median']:.2f}", flush=True)
    return {"points": points, "skipped": skipped, "document_tokens": DOC_TOKENS, "output_tokens": OUT_TOKENS,
            "prompt_tokens": PROMPT_TOKENS, "index": f"exact (torch matmul on the device), {shape.docs} random unit vectors"}


# ------------------------------------------------------------------------------------------ main

def describe(shape: Shape, wb: Workbench | None, device: torch.device, dtype: torch.dtype) -> dict:
    import transformers

    out = {"shape": shape.name, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
           f"cpu ({platform.processor() or platform.machine()})", "dtype": str(dtype).removeprefix("torch."),
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": importlib.util.find_spec("peft") is not None},
           "generator": {**asdict(shape.generator), "vocab": shape.vocab}}
    if wb is not None:
        gen = n_params(wb.lm)
        out["generator"]["parameters"] = gen
        out["retrievers"] = {n: {**asdict(shape.retrievers[n]), "parameters": n_params(m),
                                 "fraction_of_generator": round(n_params(m) / gen, 4)}
                             for n, (m, _) in wb.retrievers.items()}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-1.5b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget-s", type=float, default=420.0, help="seconds for the whole run; Fig. 3 points past it are skipped")
    ap.add_argument("--parts", default="memory,fig3", help="memory, fig3 or both")
    ap.add_argument("--modes", default="full,top_k,lora")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--out", default=str(ROOT / "metrics" / "gpu_check.json"))
    args = ap.parse_args(argv)
    t_all = time.monotonic()
    torch.manual_seed(0)
    shape, device = SHAPES[args.shape], torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type != "cuda" and args.shape != "tiny":
        print("warning: a Qwen2-1.5B shape on a CPU takes long and its times mean little; --shape tiny checks the code")
    tok = char_tokenizer()
    result: dict = {"what": "OneGen on a random Qwen2-1.5B-shaped model: Fig. 3 ratios and one training step's "
                            "peak GPU memory (bench/gpu_check.py's docstring says what each figure is)"}
    parts = args.parts.split(",")
    if "memory" in parts:
        print("training-step memory:", flush=True)
        result["train_memory"] = train_memory(shape, device, tok, args.modes.split(","), args.precisions.split(","))
    wb = None
    if "fig3" in parts:
        print("Fig. 3:", flush=True)
        with torch.no_grad():
            wb = build_workbench(shape, device, dtype, tok)
            result["fig3"] = fig3(wb, shape, t_all + args.budget_s)
        if device.type == "cuda":
            result["fig3"]["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    result = {**describe(shape, wb, device, dtype), **result, "seconds": round(time.monotonic() - t_all, 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
