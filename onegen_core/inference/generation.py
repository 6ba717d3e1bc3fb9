"""One-pass generation with retrieval: OneGen's inference engine.

Decoding is ordinary autoregressive generation over a KV cache. When a row samples `[RQ]`, the token
is fed like any generated token; the last-layer hidden state computed for it in that same forward pass
is the query vector — nothing is re-encoded. The index is searched, and the row continues from the
same cache with either the retrieved passage (R→G, `mode="rag"`: fed in the next forward pass, as a
prompt chunk) or `<CON>` (G→R, `mode="link"`: fed together with `[RQ]` in one pass, since `<CON>` does
not depend on the search).

Rows of a batch retrieve at different steps: each forward pass feeds every active row its pending
tokens (one sampled token, `[RQ]`(+`<CON>`), or an injected passage), left-padded within the chunk.
Padding holes stay in the cache but are masked out, and position ids count real tokens only, so every
row computes exactly what it would compute alone (tests compare with a no-cache forward pass). A row that
finishes leaves the batch: its cache rows are dropped, and the cache columns that no remaining row uses
(the finished rows' longer prompts or passages) go with them, so the rest of the batch stops paying for it.

Baselines reuse this loop: `query_encoder` replaces the [RQ] hidden state by a separately computed
vector (GRIT-style re-encoding or a pipeline retriever), and `index=None` with a `paste_without_search`
gives the no-retrieval lower bound.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from onegen_core.inference.index import Hit, VectorIndex, check_checkpoint
from onegen_core.method.control_tokens import ControlTokenEscape
from onegen_core.method.prompts import paste_paragraph
from onegen_core.method.tokens import SpecialTokenIds

# (row, next-token logits (vocab,), row sequence so far) -> a token id to sample, or a list of ids fed
# as one chunk without sampling (a user turn in a multi-round dialogue, a passage pasted by a pipeline)
TokenChooser = Callable[[int, torch.Tensor, list[int]], "int | list[int]"]


@dataclass
class StreamHooks:
    """Per-row callbacks for serving, called from the generating thread between forward passes: a server
    streams each row's tokens and retrievals as they happen and stops a row whose client left or whose
    deadline passed. They observe; they never feed tokens or add a forward pass (a chooser does that)."""

    # (row, token id): a sampled token as it enters the row's sequence ([RQ] included; EOS and an [RQ]
    # refused by the retrieval cap are not fed, so they are not reported; injected chunks neither)
    on_token: Callable[[int, int], None] | None = None
    # (row, event, hits best first): right after the search of that row's [RQ], before anything is pasted
    on_retrieval: Callable[[int, RetrievalEvent, list[Hit]], None] | None = None
    # (row) -> a finish reason to stop the row before it samples its next token, or None to go on
    should_stop: Callable[[int], str | None] | None = None


def default_paste(hit: Hit | None) -> str:
    """R→G: the passage as training pasted it (`<paragraph>{title}: {text}</paragraph>`); an empty
    paragraph when nothing was retrievable, so generation still resumes from a GEN position."""
    return paste_paragraph(hit.title, hit.doc_text) if hit is not None else paste_paragraph("", "")


@dataclass
class RetrievalPolicy:
    mode: Literal["rag", "link"] = "rag"
    top_k: int = 1
    max_retrievals: int = 4  # a row that emits one more [RQ] stops with finish_reason "retrieval_cap"
    max_new_tokens: int = 128  # tokens the model samples ([RQ] included; injected passages excluded)
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    paste: Callable[[Hit | None], str] = default_paste
    # a document already pasted into a row is not retrieved again by that row (R→G): the same rule for
    # OneGen and every baseline retriever, so a later hop cannot fetch the passage it is reading
    exclude_pasted: bool = True
    # greedy decoding with a chooser that can guess what follows (`CopyConstraint.draft`: the text being
    # copied): feed the chosen token and up to this many guessed ones in one pass, keep the guesses the
    # greedy choice at each position agrees with, and mask the rest out of the cache. Same tokens as one
    # token a pass (up to floating-point rounding of the wider pass), in fewer passes; 0 = off. The kept guesses
    # are not checked against `StreamHooks.should_stop` one by one (a stop takes effect after the pass, up to
    # `draft_tokens` later), which is why serving leaves it off
    draft_tokens: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("rag", "link"):
            raise ValueError(f"mode must be 'rag' or 'link', got {self.mode!r}")
        if self.top_k < 1 or self.max_retrievals < 0 or self.max_new_tokens < 1:
            raise ValueError("top_k, max_new_tokens must be >= 1 and max_retrievals >= 0")
        if not 0 <= self.draft_tokens <= 64:
            raise ValueError(f"draft_tokens must be in 0..64, got {self.draft_tokens}")


@dataclass
class RetrievalEvent:
    position: int  # index of the [RQ] token in the row's full sequence (prompt + continuation)
    query_id: int  # row of GenerationResult.query_vectors
    ids: list[str]
    scores: list[float]


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    token_ids: list[int]  # continuation: sampled and injected tokens, in order
    text: str  # continuation decoded with special tokens kept (EOS dropped)
    retrievals: list[RetrievalEvent]
    query_vectors: np.ndarray  # (n_retrievals, dim) float32, L2-normalised
    finish_reason: str  # "eos" | "length" | "retrieval_cap"


@dataclass
class EngineStats:
    """Exact, noise-free counts of one `generate` call, plus its wall time."""

    forward_passes: int = 0  # decoder calls of the generating model (prefill + feeds)
    query_encoder_passes: int = 0  # extra passes spent re-encoding queries (0 for OneGen)
    tokens_processed: int = 0  # real (non-padding) tokens fed to the generating model
    query_encoder_tokens: int = 0  # tokens fed to re-encode queries
    # (rows, width) slots of the chunks fed, padding included: slots / tokens_processed is the work
    # spent on padding (a row pasting a passage makes the others pad to its length for that pass)
    slots_processed: int = 0
    searches: int = 0  # query vectors searched
    draft_tokens_fed: int = 0  # guessed tokens fed (`RetrievalPolicy.draft_tokens`), kept or not
    draft_tokens_kept: int = 0  # of those, the ones the greedy choice agreed with
    seconds: float = 0.0
    search_seconds: float = 0.0

    def merge(self, other: "EngineStats") -> None:
        for k, v in other.__dict__.items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class _Row:
    seq: list[int]  # prompt + continuation fed so far
    n_prompt: int
    pending: list[int] = field(default_factory=list)  # tokens to feed next pass
    injecting: bool = False  # pending is a pasted passage: its logits are not sampled from until fed
    drafted: int = 0  # pending ends with this many guessed tokens, checked after the pass
    sampled: int = 0
    retrievals: list[RetrievalEvent] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    pasted: set[str] = field(default_factory=set)  # doc ids of the passages pasted into this row
    finish: str | None = None


def _lm_and_decoder(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    lm = getattr(model, "lm", model)  # accept OneGenModel or a bare *ForCausalLM
    return lm, lm.get_decoder(), lm.get_output_embeddings()


def _choose(logits: torch.Tensor, policy: RetrievalPolicy, gen: torch.Generator) -> int:
    if not policy.do_sample:
        return int(logits.argmax())
    probs = F.softmax(logits.float() / max(policy.temperature, 1e-6), dim=-1)
    if policy.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < policy.top_p  # smallest set with mass >= top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


@dataclass
class _Decoding:
    """What every step of one `generate` call reads: the call's settings, fixed for its duration."""

    tokenizer: object
    policy: RetrievalPolicy
    ids: SpecialTokenIds
    gen: torch.Generator
    choose: TokenChooser | None
    hooks: StreamHooks | None
    query_encoder: Callable[[list[int], int], np.ndarray] | None
    # guessed tokens are checked against the greedy choice, so drafting needs greedy decoding
    drafting: bool
    # a pasted passage is data text: the backbone's control tokens in it are escaped, as training's
    # `SegmentTokenizer` escaped them in the passages it pasted
    escape: ControlTokenEscape


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    index: VectorIndex | None,
    policy: RetrievalPolicy | None = None,
    checkpoint_id: str | None = None,
    allowed: Sequence[Collection[str] | None] | None = None,
    choose: TokenChooser | None = None,
    query_encoder: Callable[[list[int], int], np.ndarray] | None = None,
    paste_without_search: Callable[[int, int], Hit | None] | None = None,
    stats: EngineStats | None = None,
    hooks: StreamHooks | None = None,
    compact: bool = True,
) -> list[GenerationResult]:
    """Generate for a batch of prompts, retrieving whenever a row emits `[RQ]`.

    model: a `*ForCausalLM` (or `OneGenModel`) with the OneGen tokens; index: searched with the [RQ]
    hidden state (its `checkpoint_id` must equal `checkpoint_id` when given); allowed[i]: ids row i may
    retrieve (distractor setting). choose: overrides greedy/sampling (benchmarks script the tokens).
    query_encoder(row, ...) → (dim,) replaces the [RQ] hidden state (baselines; its passes are counted
    by the caller into `stats.query_encoder_passes`). paste_without_search(row, n) → the hit pasted for
    the n-th retrieval of `row` without any search (lower bound). hooks: streaming callbacks and a
    per-row stop (serving); a row stopped by `hooks.should_stop` finishes with the reason it returned.
    compact=False keeps finished rows in the batch as padding (the engine before 2026-12-04; the results
    are the same in exact arithmetic, while in bfloat16 the other batch shape can flip a near-tie of the
    greedy choice; `bench/generation_compaction.py` measures both).
    """
    policy = policy or RetrievalPolicy()
    if index is not None and checkpoint_id is not None:
        check_checkpoint(index, checkpoint_id)
    if index is None and paste_without_search is None and policy.max_retrievals > 0 and policy.mode == "rag":
        raise ValueError("rag generation needs an index (or paste_without_search for the lower bound)")
    stats = stats if stats is not None else EngineStats()
    t_start = time.perf_counter()
    ids = SpecialTokenIds.from_tokenizer(tokenizer)
    lm, decoder, head = _lm_and_decoder(model)
    device = next(lm.parameters()).device
    d = _Decoding(tokenizer, policy, ids, torch.Generator().manual_seed(policy.seed), choose, hooks, query_encoder,
                  drafting=policy.draft_tokens > 0 and not policy.do_sample and callable(getattr(choose, "draft", None)),
                  escape=ControlTokenEscape.for_tokenizer(tokenizer))
    rows = [_Row(seq=list(p), n_prompt=len(p)) for p in _prompt_ids(tokenizer, prompts)]
    if any(r.n_prompt == 0 for r in rows):
        raise ValueError("empty prompt")

    # Prefill: left-padded prompts, one pass.
    chunk, mask = _chunk([r.seq for r in rows], ids.pad)
    hidden, cache = _forward(decoder, chunk.to(device), mask.to(device), None, stats)
    next_logits = head(hidden[:, -1])  # (live, vocab)
    attn = mask.to(device)  # (live, cache length): 1 where the cache holds a real token
    # live[i] = the row held in position i of the cache, attn and next_logits (finished rows leave)
    live = list(range(len(rows)))
    while True:
        # 1. every active row without pending tokens samples one
        for i, b in enumerate(live):
            _sample_next(d, b, rows[b], next_logits[i])
        # every row still unfinished has pending tokens now: the others leave the batch
        keep = [i for i, b in enumerate(live) if not rows[b].finish]
        if not keep:
            break
        if compact and len(keep) < len(live):
            cache, attn = _drop_rows(cache, attn, keep)
            live = [live[i] for i in keep]
        # 2. one forward pass feeds every live row its pending tokens (left-padded within the chunk)
        chunk, cmask = _chunk([rows[b].pending for b in live], ids.pad)
        attn = torch.cat([attn, cmask.to(device)], dim=1)
        hidden, cache = _forward(decoder, chunk.to(device), attn, cache, stats)  # (live, width, dim)
        next_logits = head(hidden[:, -1])
        # 3. rows that fed [RQ]: its hidden state (already computed) is the query; search once for all
        queries = _take_fed(d, rows, live, hidden, head, next_logits, attn, stats)
        if queries:
            hits = _search(index, queries, policy, allowed, paste_without_search, rows, stats)
            _paste_hits(d, rows, queries, hits)
    stats.seconds += time.perf_counter() - t_start
    return [_result(tokenizer, r) for r in rows]


def _sample_next(d: _Decoding, b: int, r: _Row, logits: torch.Tensor) -> None:
    """Row `b` chooses what it feeds next from `logits` (vocab,), unless it has pending tokens or is done:
    a token (a guessed run after it when drafting), `[RQ]` (+ `<CON>` when linking), a chooser's chunk,
    or a finish reason (EOS, the token budget, the retrieval cap, a hook's stop)."""
    policy, ids = d.policy, d.ids
    if r.finish or r.pending:
        return
    if r.sampled >= policy.max_new_tokens:
        r.finish = "length"
        return
    if d.hooks is not None and d.hooks.should_stop is not None:
        reason = d.hooks.should_stop(b)
        if reason:
            r.finish = reason
            return
    t = d.choose(b, logits, r.seq) if d.choose else _choose(logits, policy, d.gen)
    if isinstance(t, (list, tuple)):
        if not t:
            raise ValueError(f"row {b}: the chooser returned an empty chunk")
        r.pending, r.injecting = list(t), True
        return
    r.sampled += 1
    if t == ids.eos:
        r.finish = "eos"
    elif t == ids.rq:
        if len(r.retrievals) >= policy.max_retrievals:
            r.finish = "retrieval_cap"
        else:
            r.pending = [ids.rq, ids.con] if policy.mode == "link" else [ids.rq]
    else:
        r.pending = [t]
        if d.drafting:
            guess = d.choose.draft(b, r.seq + [t], min(policy.draft_tokens, policy.max_new_tokens - r.sampled))
            r.pending += guess
            r.drafted = len(guess)
    if r.pending and d.hooks is not None and d.hooks.on_token is not None:
        d.hooks.on_token(b, t)


def _take_fed(d: _Decoding, rows: list[_Row], live: list[int], hidden: torch.Tensor, head, next_logits: torch.Tensor,
              attn: torch.Tensor, stats: EngineStats) -> list[tuple[int, np.ndarray]]:
    """After the pass that fed each live row its pending tokens (`hidden`: (live, width, dim)): move them into
    the rows' sequences (checking drafted guesses), and return the (row, unit query vector) of every row
    whose fed chunk was a sampled `[RQ]` — the hidden state the pass computed for it, or the baseline's
    `query_encoder` vector. Updates `next_logits` in place where a draft was cut short."""
    width = hidden.shape[1]
    queries: list[tuple[int, np.ndarray]] = []
    for i, b in enumerate(live):
        r = rows[b]
        if r.finish:  # compact=False: a finished row rides along as padding
            continue
        was_query = r.pending[0] == d.ids.rq and not r.injecting
        rq_pos = len(r.seq)
        col = width - len(r.pending)
        if r.drafted:
            next_logits[i] = _check_draft(r, b, i, col, hidden, head, d.choose, attn, stats, d.hooks)
            continue
        r.seq.extend(r.pending)
        r.pending, r.injecting = [], False
        if was_query:
            if d.query_encoder is not None:
                vec = np.asarray(d.query_encoder(b, r.seq), dtype=np.float32)
            else:
                vec = F.normalize(hidden[i, col].float(), dim=-1).cpu().numpy()
            vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
            queries.append((b, vec))
            r.retrievals.append(RetrievalEvent(rq_pos, len(r.vectors), [], []))
            r.vectors.append(vec)
    return queries


def _paste_hits(d: _Decoding, rows: list[_Row], queries: list[tuple[int, np.ndarray]], hits: list[list[Hit]]) -> None:
    """Record each searched row's hits on its last retrieval, report them, and (R→G) make the best hit's
    passage the row's next chunk."""
    for (b, _), row_hits in zip(queries, hits):
        r = rows[b]
        ev = r.retrievals[-1]
        ev.ids, ev.scores = [h.id for h in row_hits], [h.score for h in row_hits]
        if d.hooks is not None and d.hooks.on_retrieval is not None:
            d.hooks.on_retrieval(b, ev, list(row_hits))
        if d.policy.mode == "rag":
            if row_hits:
                r.pasted.add(row_hits[0].doc_id)
            paste = d.tokenizer(d.escape(d.policy.paste(row_hits[0] if row_hits else None)), add_special_tokens=False)
            r.pending, r.injecting = list(paste["input_ids"]), True


def _result(tokenizer, r: _Row) -> GenerationResult:
    cont = r.seq[r.n_prompt:]
    dim = r.vectors[0].shape[0] if r.vectors else 0
    return GenerationResult(
        prompt_ids=r.seq[: r.n_prompt],
        token_ids=cont,
        text=tokenizer.decode(cont, skip_special_tokens=False),
        retrievals=r.retrievals,
        query_vectors=np.stack(r.vectors) if r.vectors else np.zeros((0, dim), np.float32),
        finish_reason=r.finish or "length",
    )


def _check_draft(r: _Row, b: int, i: int, col: int, hidden: torch.Tensor, head, choose, attn: torch.Tensor,
                 stats: EngineStats, hooks: StreamHooks | None) -> torch.Tensor:
    """Row `b` (cache position `i`) fed its chosen token and `r.drafted` guesses from column `col`: keep the
    longest run of guesses the chooser picks from the logits before each, as it would one token a pass;
    mask the other guesses out of the cache (like padding: no attention, no position). Returns the
    logits the next choice reads, (vocab,)."""
    fed = r.pending
    m = r.drafted
    logits = head(hidden[i, col:col + m + 1])  # (m + 1, vocab): after the chosen token and each guess
    kept = 0
    while kept < m:
        seq = r.seq + fed[:kept + 1]
        if choose(b, logits[kept], seq) != fed[kept + 1]:
            break
        kept += 1
    r.seq.extend(fed[:kept + 1])
    r.sampled += kept
    if kept < m:
        attn[i, attn.shape[1] - len(fed) + kept + 1:] = 0  # the row's chunk ends the mask
    stats.draft_tokens_fed += m
    stats.draft_tokens_kept += kept
    if hooks is not None and hooks.on_token is not None:
        for t in fed[1:kept + 1]:
            hooks.on_token(b, t)
    r.pending, r.injecting, r.drafted = [], False, 0
    return logits[kept]


def _prompt_ids(tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
    from onegen_core.method.encoding import SegmentTokenizer

    tok = SegmentTokenizer(tokenizer)
    return [list(p) if not isinstance(p, str) else tok.prompt(p) for p in prompts]


def _forward(decoder, chunk: torch.Tensor, attn: torch.Tensor, cache, stats: EngineStats):
    """One decoder pass over `chunk` (rows, width) on top of `cache`; `attn` covers cache + chunk.
    Position ids count real tokens only, so a row's padding holes do not shift its positions."""
    width = chunk.shape[1]
    positions = (attn.cumsum(dim=1) - 1).clamp(min=0)[:, -width:]
    out = decoder(input_ids=chunk, attention_mask=attn, position_ids=positions, past_key_values=cache, use_cache=True)
    stats.forward_passes += 1
    stats.tokens_processed += int(attn[:, -width:].sum())
    stats.slots_processed += chunk.numel()
    return out.last_hidden_state, out.past_key_values


def _chunk(pending: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows' pending tokens left-padded to one chunk: ids and mask, (rows, width)."""
    width = max(1, max(len(p) for p in pending))
    chunk = torch.full((len(pending), width), pad, dtype=torch.long)
    cmask = torch.zeros((len(pending), width), dtype=torch.long)
    for i, p in enumerate(pending):
        if p:
            chunk[i, width - len(p):] = torch.tensor(p)
            cmask[i, width - len(p):] = 1
    return chunk, cmask


def _plain_dynamic(cache) -> bool:
    # only plain dynamic layers are cut and merged by hand (sliding-window or quantized layers keep extra state)
    return all(type(layer).__name__ == "DynamicLayer" and layer.is_initialized for layer in cache.layers)


def _drop_rows(cache, attn: torch.Tensor, keep: list[int]):
    """Keep only batch positions `keep` of the KV cache and of `attn` (live, cache length), and drop the
    cache columns none of them uses. A column every kept row masks out contributes nothing to any
    attention and no position id (those count real tokens), so removing it changes no row's result."""
    sel = torch.tensor(keep, dtype=torch.long, device=attn.device)
    attn = attn[sel]
    cache.batch_select_indices(sel)
    used = attn.any(dim=0)  # (cache length,)
    if bool(used.all()) or not _plain_dynamic(cache):
        return cache, attn
    cols = used.nonzero().flatten()
    for layer in cache.layers:
        # DynamicLayer keys/values: (batch, kv heads, cache length, head dim)
        c = cols.to(layer.keys.device)
        layer.keys = layer.keys[:, :, c]
        layer.values = layer.values[:, :, c]
    return cache, attn[:, cols]


def _search(index, queries, policy, allowed, paste_without_search, rows, stats) -> list[list[Hit]]:
    if index is None:
        out = []
        for b, _ in queries:
            hit = paste_without_search(b, len(rows[b].retrievals) - 1) if paste_without_search else None
            out.append([hit] if hit is not None else [])
        return out
    t0 = time.perf_counter()
    vecs = np.stack([v for _, v in queries])  # (n, dim)
    allow = [allowed[b] for b, _ in queries] if allowed is not None else None
    if policy.exclude_pasted and policy.mode == "rag" and any(rows[b].pasted for b, _ in queries):
        hits = index.search(vecs, policy.top_k, allow, [set(rows[b].pasted) for b, _ in queries])
    else:
        hits = index.search(vecs, policy.top_k, allow)
    stats.searches += len(queries)
    stats.search_seconds += time.perf_counter() - t0
    return hits
