"""Sampling (query, positive, negatives) triples from a batch's positive/negative masks.

Kept apart from the losses (plain functions of tensors) and the model (which only reads vectors).
Sampling uses an explicit torch.Generator so a resumed run draws the same pairs.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch


@dataclass
class PairIndex:
    query_rows: torch.Tensor  # (n,) long: index into the batch's queries
    positive_cols: torch.Tensor  # (n,) long: index into the batch's units
    negative_cols: torch.Tensor  # (n, k) long
    stats: Counter


def sample_pairs(
    positive_mask: torch.Tensor,
    negative_mask: torch.Tensor,
    positives_per_query: int,
    negatives_per_positive: int,
    generator: torch.Generator | None = None,
    own_mask: torch.Tensor | None = None,
    own_first: bool = False,
) -> PairIndex:
    """Draw up to `positives_per_query` positives per query, each with `negatives_per_positive`
    negatives (without replacement when enough exist, else with replacement).

    positive_mask, negative_mask, own_mask: (n_queries, n_units) bool. Queries with no positive or no
    negative contribute nothing and are counted in `stats`.
    own_first: draw a positive's negatives from the query's own example first (`own_mask`: its
    labelled negatives, e.g. a question's distractor paragraphs) and only then from the units the
    batch's other examples share. Why: with uniform draws a multi-hop query in a batch with entity-
    linking windows gets mostly other examples' documents (~60 entities a window against ~20 units of
    its own paragraphs), which are easy, while inference ranks the question's own paragraphs.
    """
    if positives_per_query < 1 or negatives_per_positive < 1:
        raise ValueError("positives_per_query and negatives_per_positive must be >= 1")
    if own_first and own_mask is None:
        raise ValueError("own_first needs an own_mask (n_queries, n_units)")
    if own_mask is not None and own_mask.shape != negative_mask.shape:
        raise ValueError(f"own_mask is {tuple(own_mask.shape)}, the negative mask {tuple(negative_mask.shape)}")
    stats: Counter = Counter()
    q_rows: list[int] = []
    p_cols: list[int] = []
    n_cols: list[torch.Tensor] = []
    k = negatives_per_positive
    for i in range(positive_mask.shape[0]):
        pos = positive_mask[i].nonzero().flatten().cpu()
        neg = negative_mask[i].nonzero().flatten().cpu()
        if len(pos) == 0:
            stats["queries_skipped_no_positive"] += 1
            continue
        if len(neg) == 0:
            stats["queries_skipped_no_negative"] += 1
            continue
        stats["queries_used"] += 1
        own = own_mask[i, neg] if own_mask is not None else None  # (len(neg),) bool: the query's own negatives
        pos = pos[torch.randperm(len(pos), generator=generator)[:positives_per_query]]
        for p in pos.tolist():
            if len(neg) >= k:
                order = torch.randperm(len(neg), generator=generator)
                if own_first:
                    order = torch.cat([order[own[order]], order[~own[order]]])  # own first, each part shuffled
                picked = neg[order[:k]]
            else:
                picked = neg[torch.randint(len(neg), (k,), generator=generator)]
            if own is not None:
                stats["negatives_own"] += int(own_mask[i, picked].sum())
            stats["negatives_drawn"] += k
            q_rows.append(i)
            p_cols.append(p)
            n_cols.append(picked)
    stats["pairs"] += len(q_rows)
    return PairIndex(
        query_rows=torch.tensor(q_rows, dtype=torch.long),
        positive_cols=torch.tensor(p_cols, dtype=torch.long),
        negative_cols=torch.stack(n_cols) if n_cols else torch.zeros((0, k), dtype=torch.long),
        stats=stats,
    )
