"""Heuristic positive/negative labelling (App. F.2, G.1, H.1) on top of reconstruction.

Multi-hop: the supporting sentences of a hop's paragraph are its positives; the other sentences of
that paragraph are hard negatives (kept first), then the other paragraphs' sentences.
Entity linking: the gold entity's description is the positive; negatives are same-name candidates
(hard) plus random entities. NIL / unmappable mentions get no [RQ] and are counted.
Self-RAG (App. F): for each positive passage, the corpus passages an embedding model ranks inside a
window far down the list (e.g. ranks 5985–6000 of ~6000): unrelated enough not to be false negatives,
drawn from the same corpus so they are not trivially off-domain.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from onegen_core.data.elevant import ElevantArticle
from onegen_core.data.kb import Entity
from onegen_core.method.segments import Query, TrainingExample
from onegen_core.prepare.entity_linking import Mention, reconstruct_entity_linking

_WORD = re.compile(r"\w+")


def cap_multihop_labels(ex: TrainingExample, positives: int, negatives_per_positive: int, seed: int) -> TrainingExample:
    """Keep up to `positives` positives per query (0 = all) and `negatives_per_positive` explicit
    negatives per kept positive (0 = all): hard negatives (same paragraph) first, then random."""
    if positives == 0 and negatives_per_positive == 0:
        return ex
    rng = random.Random(f"{seed}:{ex.id}")
    unit_doc = {u: d.id for d in ex.documents for u in d.unit_ids()}
    queries = []
    for q in ex.queries:
        pos = list(q.positives)
        if positives:
            pos = pos[:positives]
        neg = list(q.negatives)
        if negatives_per_positive:
            gold_docs = {unit_doc[u] for u in q.positives}
            hard = [u for u in neg if unit_doc[u] in gold_docs]
            easy = [u for u in neg if unit_doc[u] not in gold_docs]
            rng.shuffle(hard)
            rng.shuffle(easy)
            neg = (hard + easy)[: negatives_per_positive * max(1, len(pos))]
        queries.append(Query(q.id, tuple(pos), tuple(neg)))
    return replace(ex, queries=tuple(queries))


def _words(s: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(s)}


@dataclass
class EntityNegatives:
    """Same-name candidates by word overlap of mention and entity title, plus random entities."""

    entities: Sequence[Entity]
    hard: int
    random: int

    def __post_init__(self) -> None:
        self.by_word: dict[str, list[str]] = {}
        for e in self.entities:
            for w in _words(e.title):
                self.by_word.setdefault(w, []).append(e.id)
        self.ids = [e.id for e in self.entities]

    def __call__(self, mention: str, gold: str, rng: random.Random) -> tuple[str, ...]:
        overlap: Counter = Counter()
        for w in _words(mention):
            for eid in self.by_word.get(w, ()):
                if eid != gold:
                    overlap[eid] += 1
        hard = [eid for eid, _ in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0]))[: self.hard]]
        pool = [eid for eid in rng.sample(self.ids, min(len(self.ids), self.random + len(hard) + 1))
                if eid != gold and eid not in hard]
        return tuple(hard + pool[: self.random])


def text_windows(text: str, spans: list[tuple[int, int]], max_chars: int) -> list[tuple[int, int]]:
    """Cut `text` into windows of at most `max_chars`, never inside a mention span, preferring a
    newline or a space as the cut point."""
    out, start, n = [], 0, len(text)
    while start < n:
        end = min(n, start + max_chars)
        if end < n:
            cut = max(text.rfind("\n", start, end), text.rfind(" ", start, end))
            end = cut if cut > start else end
            for s, e in spans:  # move the cut before a mention it would split
                if s < end < e:
                    end = s if s > start else e
        out.append((start, end))
        start = end
    return out


def entity_linking_examples(
    article: ElevantArticle, kb: dict[str, Entity], negatives: EntityNegatives, max_chars: int, seed: int,
    stats: Counter,
) -> list[TrainingExample]:
    """One training example per window of the article; linkable top-level mentions get an [RQ]."""
    rng = random.Random(f"{seed}:{article.benchmark}:{article.id}")
    labels = article.top_level_labels()
    stats["el_labels"] += len(article.labels)
    stats["el_nested_labels_skipped"] += len(article.labels) - len(labels)
    usable = []
    for lb in labels:
        if not lb.is_linkable:
            stats["el_nil_mentions"] += 1
        elif lb.entity_id not in kb:
            stats["el_mentions_not_in_kb"] += 1
        else:
            usable.append(lb)
    out = []
    for w_start, w_end in text_windows(article.text, [lb.span for lb in usable], max_chars):
        inside = [lb for lb in usable if w_start <= lb.span_start and lb.span_end <= w_end]
        if not inside:
            continue
        mentions = [
            Mention(lb.span_start - w_start, lb.span_end - w_start, lb.entity_id,
                    negatives(lb.mention(article.text), lb.entity_id, rng))
            for lb in inside
        ]
        needed = {m.entity_id for m in mentions} | {n for m in mentions for n in m.negatives}
        ents = {eid: (kb[eid].title, kb[eid].description) for eid in needed}
        out.append(reconstruct_entity_linking(f"{article.benchmark}/{article.id}@{w_start}",
                                              article.text[w_start:w_end], mentions, ents))
        stats["el_mentions_linked"] += len(mentions)
    return out


Encode = Callable[[list[str]], np.ndarray]  # texts → (n, dim) L2-normalised vectors (MiniLM, injected)


def rank_window_negatives(
    positives: Sequence[str], corpus: Sequence[str], encode: Encode, window: tuple[int, int], batch_size: int = 256
) -> list[list[int]]:
    """For each positive text, the indices of `corpus` ranked in [window[0], window[1]) by cosine
    similarity (rank 0 = most similar). `encode(texts) -> (n, dim)` L2-normalised vectors (MiniLM).
    Corpus passages identical to the positive are never returned (they would be false negatives)."""
    lo, hi = window
    if not 0 <= lo < hi:
        raise ValueError(f"window must satisfy 0 <= lo < hi, got {window}")
    if hi > len(corpus):
        raise ValueError(f"window end {hi} is past the corpus size {len(corpus)}")
    c = np.asarray(encode(list(corpus)), dtype=np.float32)  # (n_corpus, dim)
    out = []
    for i in range(0, len(positives), batch_size):
        q = np.asarray(encode(list(positives[i:i + batch_size])), dtype=np.float32)  # (b, dim)
        order = np.argsort(-(q @ c.T), axis=1, kind="stable")  # (b, n_corpus)
        for j, row in enumerate(order):
            pos_text = positives[i + j].strip()
            ranked = [int(k) for k in row if corpus[k].strip() != pos_text]
            out.append(ranked[lo:hi])
    return out


def window_ranks(n: int, window: Sequence[float]) -> tuple[int, int]:
    """The ranks [lo, hi) that `window` = (lo, hi) as fractions names in a ranked list of `n` passages
    (`label.selfrag_negative_window`): never empty, never past the list (lo ≤ n - 1, hi ≤ n)."""
    lo_f, hi_f = window
    lo, hi = min(int(lo_f * n), n - 1), max(int(lo_f * n) + 1, min(n, round(hi_f * n)))
    return min(lo, n - 1), min(hi, n)


def passage_negatives(passages: Sequence[str], encode: Encode, window: Sequence[float],
                      max_negatives: int) -> dict[str, list[str]]:
    """Self-RAG hard negatives (App. F): each passage text → the passages of the same corpus that
    `encode` ranks inside `window` (fractions of the ranked list, the passage itself left out), most
    similar first, at most `max_negatives`. A corpus of one passage has none."""
    if len(passages) < 2:
        return {}
    n = len(passages) - 1  # ranked without the passage itself
    ranked = rank_window_negatives(passages, passages, encode, window_ranks(n, window))
    return {text: [passages[k] for k in ks][:max_negatives] for text, ks in zip(passages, ranked)}
