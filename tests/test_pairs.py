from __future__ import annotations

import torch

from onegen_core.method.pairs import sample_pairs


def masks():
    pos = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    neg = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return pos, neg


def test_pairs_respect_masks_and_count_skips():
    pos, neg = masks()
    p = sample_pairs(pos, neg, positives_per_query=2, negatives_per_positive=2, generator=torch.Generator().manual_seed(0))
    assert p.stats["queries_used"] == 2
    assert p.stats["queries_skipped_no_positive"] == 1
    assert p.stats["queries_skipped_no_negative"] == 1
    assert p.query_rows.tolist() == [0, 0, 3]  # two positives for query 0, one for query 3
    assert p.negative_cols.shape == (3, 2)
    for q, pc, nc in zip(p.query_rows, p.positive_cols, p.negative_cols):
        assert pos[q, pc]
        assert neg[q, nc].all()
    # query 0 has 3 negatives ≥ k: drawn without replacement
    assert len(set(p.negative_cols[0].tolist())) == 2
    # query 3 has a single negative: drawn with replacement
    assert p.negative_cols[2].tolist() == [0, 0]


def test_sampling_is_reproducible():
    pos, neg = masks()
    a = sample_pairs(pos, neg, 1, 2, torch.Generator().manual_seed(5))
    b = sample_pairs(pos, neg, 1, 2, torch.Generator().manual_seed(5))
    assert torch.equal(a.positive_cols, b.positive_cols) and torch.equal(a.negative_cols, b.negative_cols)


def test_no_queries():
    p = sample_pairs(torch.zeros(0, 3, dtype=torch.bool), torch.zeros(0, 3, dtype=torch.bool), 1, 4)
    assert p.query_rows.numel() == 0 and p.negative_cols.shape == (0, 4)
