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
    # (n, k) bool: False marks padding (negatives_per_positive 0 gives each row all of its query's
    # negatives, so rows of queries with fewer candidates are padded up to the batch's largest count)
    negative_valid: torch.Tensor
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
    negatives (without replacement when enough exist, else with replacement); 0 = every candidate
    negative of the query in the batch (the full InfoNCE denominator over the batch's units), padded
    to the batch's largest count and marked in `negative_valid`.

    positive_mask, negative_mask, own_mask: (n_queries, n_units) bool. Queries with no positive or no
    negative contribute nothing and are counted in `stats`.
    own_first: draw a positive's negatives from the query's own example first (`own_mask`: its
    labelled negatives, e.g. a question's distractor paragraphs) and only then from the units the
    batch's other examples share. Why: with uniform draws a multi-hop query in a batch with entity-
    linking windows gets mostly other examples' documents (~60 entities a window against ~20 units of
    its own paragraphs), which are easy, while inference ranks the question's own paragraphs.
    """
    if positives_per_query < 1 or negatives_per_positive < 0:
        raise ValueError("positives_per_query must be >= 1 and negatives_per_positive >= 0 (0 = all)")
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
            if k == 0:
                picked = neg  # every candidate, in unit order (no draw: nothing random to resume)
            elif len(neg) >= k:
                order = torch.randperm(len(neg), generator=generator)
                if own_first:
                    order = torch.cat([order[own[order]], order[~own[order]]])  # own first, each part shuffled
                picked = neg[order[:k]]
            else:
                picked = neg[torch.randint(len(neg), (k,), generator=generator)]
            if own is not None:
                stats["negatives_own"] += int(own_mask[i, picked].sum())
            stats["negatives_drawn"] += len(picked)
            q_rows.append(i)
            p_cols.append(p)
            n_cols.append(picked)
    stats["pairs"] += len(q_rows)
    width = max((len(c) for c in n_cols), default=k)
    cols = torch.zeros((len(n_cols), width), dtype=torch.long)  # (n, width); padding points at a real unit
    valid = torch.zeros((len(n_cols), width), dtype=torch.bool)
    for r, c in enumerate(n_cols):
        cols[r, : len(c)] = c
        cols[r, len(c):] = c[0]
        valid[r, : len(c)] = True
    return PairIndex(
        query_rows=torch.tensor(q_rows, dtype=torch.long),
        positive_cols=torch.tensor(p_cols, dtype=torch.long),
        negative_cols=cols,
        negative_valid=valid,
        stats=stats,
    )
