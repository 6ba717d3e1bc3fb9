"""BPR and InfoNCE equal their formulas (hand-computed and loop references)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from onegen_core.method.losses import bpr_loss, info_nce_loss


def unit(v):
    t = torch.tensor(v, dtype=torch.float64)
    return t / t.norm()


def test_bpr_hand_computed():
    q = torch.tensor([[2.0, 0.0]])  # normalised inside → (1, 0)
    pos = torch.tensor([[3.0, 0.0]])  # cos = 1
    neg = torch.tensor([[[0.0, 5.0], [-1.0, 0.0]]])  # cos = 0 and -1
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(-2.0)))) / 2
    assert bpr_loss(q, pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0]])  # shared (k, d)
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0 / t)))
    assert info_nce_loss(q, pos, neg, temperature=t).item() == pytest.approx(expected, rel=1e-6)


def reference_bpr(q, pos, neg):
    terms = []
    for i in range(q.shape[0]):
        negs = neg[i] if neg.dim() == 3 else neg
        qi, pi = F.normalize(q[i], dim=0), F.normalize(pos[i], dim=0)
        for n in negs:
            terms.append(-torch.log(torch.sigmoid(qi @ pi - qi @ F.normalize(n, dim=0))))
    return torch.stack(terms).mean()


def reference_info_nce(q, pos, neg, t, in_batch):
    losses = []
    for i in range(q.shape[0]):
        negs = list(neg[i] if neg.dim() == 3 else neg)
        if in_batch:
            negs += [pos[j] for j in range(q.shape[0]) if j != i]
        qi = F.normalize(q[i], dim=0)
        scores = [qi @ F.normalize(pos[i], dim=0)] + [qi @ F.normalize(n, dim=0) for n in negs]
        logits = torch.stack(scores) / t
        losses.append(-torch.log_softmax(logits, dim=0)[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("shared", [False, True])
def test_bpr_matches_loop(shared):
    g = torch.Generator().manual_seed(0)
    q, pos = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    neg = torch.randn(3, 7, generator=g) if shared else torch.randn(5, 3, 7, generator=g)
    assert bpr_loss(q, pos, neg).item() == pytest.approx(reference_bpr(q, pos, neg).item(), rel=1e-5)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("in_batch", [False, True])
def test_info_nce_matches_loop(shared, in_batch):
    g = torch.Generator().manual_seed(1)
    q, pos = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    neg = torch.randn(2, 6, generator=g) if shared else torch.randn(4, 2, 6, generator=g)
    got = info_nce_loss(q, pos, neg, temperature=0.1, in_batch=in_batch)
    assert got.item() == pytest.approx(reference_info_nce(q, pos, neg, 0.1, in_batch).item(), rel=1e-5)


def test_vectors_are_normalised_over_features():
    # Scaling any vector leaves the loss unchanged: each vector is normalised over its own features
    # (the upstream code normalised over the sequence axis, which this would catch).
    g = torch.Generator().manual_seed(2)
    q, pos, neg = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    scale = torch.tensor([[1.0], [10.0], [0.1]])
    assert bpr_loss(q * scale, pos * 3, neg * 7).item() == pytest.approx(bpr_loss(q, pos, neg).item(), rel=1e-5)
    assert info_nce_loss(q * scale, pos, neg, 0.05).item() == pytest.approx(info_nce_loss(q, pos, neg, 0.05).item(), rel=1e-5)


def test_gradients_flow_to_all_inputs():
    q, pos, neg = (torch.randn(2, 3, requires_grad=True) for _ in range(3))
    bpr_loss(q, pos, neg).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, pos, neg))


@pytest.mark.parametrize(
    "q, pos, neg",
    [
        (torch.randn(2, 3), torch.randn(3, 3), torch.randn(2, 3)),  # pos rows differ
        (torch.randn(2, 3), torch.randn(2, 3), torch.randn(3, 1, 3)),  # per-query neg rows differ
        (torch.randn(2, 3), torch.randn(2, 3), torch.randn(3)),  # neg of wrong rank
    ],
)
def test_shape_errors(q, pos, neg):
    with pytest.raises(ValueError):
        bpr_loss(q, pos, neg)


def test_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(torch.randn(1, 2), torch.randn(1, 2), torch.randn(1, 2), temperature=0.0)


@pytest.mark.parametrize("kind", ["bpr", "info_nce"])
def test_padded_negatives_count_for_nothing(kind):
    """A row padded with invalid negatives gives the loss of the same row without them."""
    g = torch.Generator().manual_seed(3)
    q, pos = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    neg = torch.randn(2, 4, 6, generator=g)
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    if kind == "bpr":
        got = bpr_loss(q, pos, neg, neg_valid=valid)
        terms = [reference_bpr(q[:1], pos[:1], neg[:1]) * 4, reference_bpr(q[1:], pos[1:], neg[1:, :2]) * 2]
        want = sum(terms) / 6  # the mean over the 6 real (query, negative) pairs
    else:
        got = info_nce_loss(q, pos, neg, 0.1, neg_valid=valid)
        want = (reference_info_nce(q[:1], pos[:1], neg[:1], 0.1, False)
                + reference_info_nce(q[1:], pos[1:], neg[1:, :2], 0.1, False)) / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # what the padding holds does not matter
    neg2 = neg.clone()
    neg2[1, 2:] = torch.randn(2, 6, generator=g) * 100
    again = bpr_loss(q, pos, neg2, neg_valid=valid) if kind == "bpr" else info_nce_loss(q, pos, neg2, 0.1, neg_valid=valid)
    assert again.item() == pytest.approx(got.item(), rel=1e-6)
    with pytest.raises(ValueError, match="valid negative"):
        bad = valid.clone()
        bad[1] = False
        bpr_loss(q, pos, neg, neg_valid=bad) if kind == "bpr" else info_nce_loss(q, pos, neg, 0.1, neg_valid=bad)
