from __future__ import annotations

import pytest
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


def test_own_negatives_first_draws_the_querys_own_units_before_shared_ones():
    # one query, positive unit 0; own negatives 1-3 (its distractors), shared negatives 4-11 (other examples)
    pos = torch.zeros(1, 12, dtype=torch.bool)
    pos[0, 0] = True
    neg = torch.ones(1, 12, dtype=torch.bool)
    neg[0, 0] = False
    own = torch.zeros(1, 12, dtype=torch.bool)
    own[0, :4] = True
    seen_own = set()
    for seed in range(20):
        p = sample_pairs(pos, neg, 1, 5, torch.Generator().manual_seed(seed), own_mask=own, own_first=True)
        picked = p.negative_cols[0].tolist()
        assert set(picked[:3]) == {1, 2, 3}  # every own negative, whatever the draw
        assert all(4 <= c <= 11 for c in picked[3:]) and len(set(picked)) == 5
        assert p.stats["negatives_own"] == 3 and p.stats["negatives_drawn"] == 5
        seen_own.add(tuple(picked[:3]))
    assert len(seen_own) > 1  # own negatives are still shuffled
    # uniform draws (the default) mostly pick shared units: 8 of the 11 negatives
    uniform = [sample_pairs(pos, neg, 1, 5, torch.Generator().manual_seed(s)).negative_cols[0] for s in range(50)]
    own_share = sum(int(own[0, u].sum()) for u in uniform) / (50 * 5)
    assert own_share < 0.5


def test_own_negatives_first_keeps_a_short_list_of_own_negatives_and_needs_the_mask():
    pos = torch.tensor([[1, 0, 0, 0]], dtype=torch.bool)
    neg = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)
    own = torch.tensor([[1, 0, 0, 1]], dtype=torch.bool)
    p = sample_pairs(pos, neg, 1, 2, torch.Generator().manual_seed(0), own_mask=own, own_first=True)
    assert p.negative_cols[0].tolist()[0] == 3  # the one own negative first, then a shared one
    assert p.negative_cols[0].tolist()[1] in (1, 2)
    with pytest.raises(ValueError, match="own_mask"):
        sample_pairs(pos, neg, 1, 2, own_first=True)
    with pytest.raises(ValueError, match="own_mask is"):
        sample_pairs(pos, neg, 1, 2, own_mask=own[:, :3])


def test_uniform_draws_count_their_own_share_and_draw_as_before():
    pos, neg = masks()
    own = torch.ones_like(neg)
    a = sample_pairs(pos, neg, 1, 2, torch.Generator().manual_seed(5))
    b = sample_pairs(pos, neg, 1, 2, torch.Generator().manual_seed(5), own_mask=own)
    assert torch.equal(a.negative_cols, b.negative_cols)  # counting does not change the draws
    assert "negatives_own" not in a.stats
    assert b.stats["negatives_own"] == b.stats["negatives_drawn"] == 2 * len(b.query_rows)


def test_zero_negatives_per_positive_takes_every_candidate_and_pads():
    pos, neg = masks()
    p = sample_pairs(pos, neg, positives_per_query=2, negatives_per_positive=0)
    assert p.query_rows.tolist() == [0, 0, 3]
    # query 0 has 3 candidates (units 2, 3, 4), query 3 one (unit 0): padded to width 3
    assert p.negative_cols.shape == (3, 3) and p.negative_valid.shape == (3, 3)
    assert p.negative_valid.tolist() == [[True] * 3, [True] * 3, [True, False, False]]
    assert sorted(p.negative_cols[0].tolist()) == [2, 3, 4]
    for q, nc, ok in zip(p.query_rows, p.negative_cols, p.negative_valid):
        assert neg[q, nc[ok]].all()
        assert set(nc[ok].tolist()) == set(neg[q].nonzero().flatten().tolist())  # all of them, once each
    assert p.stats["negatives_drawn"] == 3 + 3 + 1
    with pytest.raises(ValueError, match="negatives_per_positive"):
        sample_pairs(pos, neg, 1, -1)
