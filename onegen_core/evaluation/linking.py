"""End-to-end entity linking evaluation (G→R) on ELEVANT benchmark articles.

Linking (MD and EL): the model rewrites each window of the article, marking mentions as
`<MENTION>span</MENTION>[RQ]<CON>`; each [RQ]'s hidden state retrieves from the encoded entity KB.
Decoding is constrained to copy the input (`CopyConstraint`): at each step the model may only choose a
token whose bytes continue the input text, or a mention bracket at a character boundary, so every
predicted span maps to exact character offsets of the article. The choice among those is the model's
(greedy); [RQ] is forced after `</MENTION>` because training always puts it there.

Disambiguation (ED): gold mentions are given. The window is encoded as training encodes it (gold
mention markup, [RQ]<CON> after each) and each [RQ] hidden state of that single forward pass retrieves.

Scores are InKB micro precision/recall/F1 (ELEVANT/GERBIL strong matching) over (article, start, end,
entity) tuples; MD over (article, start, end). Gold: top-level labels with a Wikidata id inside the
article's evaluation span. Labels ELEVANT marks optional or coreference are not required, and a
prediction on exactly their span is neither credited nor charged.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from onegen_core.data.elevant import ElevantArticle
from onegen_core.evaluation.metrics import prf_counts, prf_from_counts
from onegen_core.inference.copy_constraint import CopyConstraint
from onegen_core.inference.generation import EngineStats, RetrievalPolicy, generate
from onegen_core.inference.index import VectorIndex
from onegen_core.inference.token_bytes import token_bytes
from onegen_core.method.encoding import SegmentTokenizer, encode_example
from onegen_core.prepare.entity_linking import Mention, reconstruct_entity_linking
from onegen_core.prepare.labelling import text_windows


@dataclass(frozen=True)
class Window:
    key: str  # "{benchmark}/{article id}@{offset}"
    article: str  # "{benchmark}/{article id}"
    offset: int  # window start in the article text (characters)
    text: str


@dataclass
class PredictedMention:
    start: int  # article character offsets, end exclusive
    end: int
    entity_id: str | None  # None: marked but not linked (retrieval cap, nothing retrievable)
    score: float | None = None
    candidates: list[str] = field(default_factory=list)


def article_key(a: ElevantArticle) -> str:
    return f"{a.benchmark}/{a.id}"


def windows_of(articles: Sequence[ElevantArticle], max_chars: int) -> list[Window]:
    """Windows as training cut them, except that no gold span steers the cut (evaluation must not
    see gold boundaries)."""
    out = []
    for a in articles:
        for s, e in text_windows(a.text, [], max_chars):
            if a.text[s:e].strip():
                out.append(Window(f"{article_key(a)}@{s}", article_key(a), s, a.text[s:e]))
    return out


def gold_sets(a: ElevantArticle) -> tuple[set[tuple], set[tuple]]:
    """(required InKB gold (article, start, end, entity), spans to ignore (article, start, end))."""
    lo, hi = a.evaluation_span or (0, len(a.text))
    key = article_key(a)
    required, ignore = set(), set()
    for lb in a.labels:
        if not (lo <= lb.span_start and lb.span_end <= hi):
            continue
        if lb.parent is None and lb.is_linkable and not (lb.optional or lb.coref):
            required.add((key, lb.span_start, lb.span_end, lb.entity_id))
        elif lb.optional or lb.coref or lb.parent is not None:
            ignore.add((key, lb.span_start, lb.span_end))
    return required, ignore


def link_windows(
    model,
    tokenizer,
    windows: Sequence[Window],
    index: VectorIndex,
    max_retrievals: int = 64,
    batch_size: int = 8,
    checkpoint_id: str | None = None,
    on_batch: Callable[[int], None] | None = None,
    stats: EngineStats | None = None,
) -> tuple[dict[str, list[PredictedMention]], Counter]:
    """Constrained G→R generation over every window. Returns predictions per article and a count of
    windows by finish reason (a window that hits the length or retrieval cap keeps the mentions it
    completed; its remaining gold mentions stay in the denominator)."""
    tok = SegmentTokenizer(tokenizer)
    vocab_bytes = token_bytes(tokenizer)
    by_article: dict[str, list[PredictedMention]] = {}
    finish: Counter = Counter()
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].text))  # similar lengths per batch
    for i in range(0, len(order), batch_size):
        batch = [windows[j] for j in order[i:i + batch_size]]
        prompts = [tok.prefix() + tok(w.text + "\n") for w in batch]
        text_tokens = max(len(tok(w.text)) for w in batch)
        policy = RetrievalPolicy(mode="link", max_retrievals=max_retrievals,
                                 max_new_tokens=2 * text_tokens + 4 * max_retrievals + 8)
        chooser = CopyConstraint(tokenizer, [w.text for w in batch], [len(p) for p in prompts], vocab_bytes)
        results = generate(model, tokenizer, prompts, index, policy, checkpoint_id=checkpoint_id,
                           choose=chooser, stats=stats)
        for b, (w, res) in enumerate(zip(batch, results)):
            chooser._advance(b, res.prompt_ids + res.token_ids)
            finish[res.finish_reason] += 1
            preds = by_article.setdefault(w.article, [])
            for k, (s, e) in enumerate(chooser.spans[b]):
                ev = res.retrievals[k] if k < len(res.retrievals) else None
                top = ev.ids[0] if ev and ev.ids else None
                preds.append(PredictedMention(w.offset + s, w.offset + e, top,
                                              ev.scores[0] if top else None, list(ev.ids) if ev else []))
        if on_batch:
            on_batch(len(batch))
    return by_article, finish


@torch.no_grad()
def disambiguate_windows(
    model,
    tokenizer,
    windows: Sequence[Window],
    gold: dict[str, set[tuple]],
    index: VectorIndex,
    max_length: int = 4096,
    top_k: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, list[PredictedMention]], Counter]:
    """ED: each gold mention (article, start, end, entity) inside a window gets the entity its
    teacher-forced [RQ] retrieves. Mentions whose [RQ] falls past `max_length` are counted, unlinked."""
    tok = SegmentTokenizer(tokenizer)
    lm = getattr(model, "lm", model)
    decoder = lm.get_decoder()
    device = next(lm.parameters()).device
    out: dict[str, list[PredictedMention]] = {}
    counts: Counter = Counter()
    for w in windows:
        lo, hi = w.offset, w.offset + len(w.text)
        inside = sorted((g for g in gold.get(w.article, ()) if lo <= g[1] and g[2] <= hi), key=lambda g: g[1])
        if inside:
            mentions = [Mention(g[1] - lo, g[2] - lo, g[3]) for g in inside]
            ex = reconstruct_entity_linking(w.key, w.text, mentions, {g[3]: ("", "") for g in inside})
            enc = encode_example(ex, tok, max_length)
            ids = torch.tensor([enc.input_ids], device=device)
            hidden = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
            pos = {qid: p for p, qid in enc.queries}
            found = [(g, pos.get(f"m{k}")) for k, g in enumerate(inside)]
            kept = [(g, p) for g, p in found if p is not None]
            counts["mentions"] += len(inside)
            counts["mentions_truncated"] += len(inside) - len(kept)
            preds = out.setdefault(w.article, [])
            if kept:
                q = F.normalize(hidden[0, [p for _, p in kept]].float(), dim=-1).cpu().numpy()  # (n, dim)
                hits = index.search(np.ascontiguousarray(q), top_k)
                for (g, _), h in zip(kept, hits):
                    preds.append(PredictedMention(g[1], g[2], h[0].id if h else None, h[0].score if h else None,
                                                  [x.id for x in h]))
            preds += [PredictedMention(g[1], g[2], None) for g, p in found if p is None]
        if on_batch:
            on_batch(1)
    return out, counts


def score_linking(
    articles: Sequence[ElevantArticle], predictions: dict[str, list[PredictedMention]]
) -> dict[str, dict[str, dict[str, float]]]:
    """{"all" | benchmark: {"md" | "el": {precision, recall, f1, tp, fp, fn}}}, micro over mentions."""
    counts: dict[str, dict[str, Counter]] = {}
    for a in articles:
        required, ignore = gold_sets(a)
        lo, hi = a.evaluation_span or (0, len(a.text))
        key = article_key(a)
        preds = [p for p in predictions.get(key, []) if lo <= p.start and p.end <= hi
                 and (key, p.start, p.end) not in ignore]
        el_pred = {(key, p.start, p.end, p.entity_id) for p in preds if p.entity_id}
        md_pred = {(key, p.start, p.end) for p in preds}
        md_gold = {g[:3] for g in required}
        for bucket in ("all", a.benchmark):
            c = counts.setdefault(bucket, {"md": Counter(), "el": Counter()})
            c["md"].update(prf_counts(md_pred, md_gold))
            c["el"].update(prf_counts(el_pred, required))
    return {b: {k: {**prf_from_counts(v["tp"], v["fp"], v["fn"]), **{n: int(v[n]) for n in ("tp", "fp", "fn")}}
                for k, v in c.items()} for b, c in counts.items()}


def gold_by_article(articles: Sequence[ElevantArticle]) -> dict[str, set[tuple]]:
    return {article_key(a): gold_sets(a)[0] for a in articles}
