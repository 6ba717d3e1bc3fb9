"""Retrieval losses as plain functions of tensors.

Every vector is L2-normalised over its *features* inside the loss, so training scores are exactly the
cosine similarity that inference ranks by. (The upstream code normalised over the sequence axis, which
makes training and inference disagree.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), p=2, dim=-1)


def _negative_scores(q: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """q (n, d) normalised; neg (n, k, d) per query or (k, d) shared → scores (n, k)."""
    if neg.dim() == 2:
        return q @ neg.T
    if neg.dim() == 3:
        if neg.shape[0] != q.shape[0]:
            raise ValueError(f"neg has {neg.shape[0]} rows of negatives for {q.shape[0]} queries")
        return torch.einsum("nd,nkd->nk", q, neg)
    raise ValueError(f"neg must be (n, k, d) or (k, d), got shape {tuple(neg.shape)}")


def _check(q: torch.Tensor, pos: torch.Tensor) -> None:
    if q.dim() != 2 or pos.shape != q.shape:
        raise ValueError(f"q and pos must both be (n, d); got {tuple(q.shape)} and {tuple(pos.shape)}")


def _check_valid(neg_valid: torch.Tensor | None, neg_scores: torch.Tensor) -> None:
    if neg_valid is None:
        return
    if neg_valid.shape != neg_scores.shape or neg_valid.dtype != torch.bool:
        raise ValueError(f"neg_valid must be a bool {tuple(neg_scores.shape)} mask, got {neg_valid.dtype} {tuple(neg_valid.shape)}")
    if not bool(neg_valid.any(dim=1).all()):
        raise ValueError("every row needs at least one valid negative")


def bpr_loss(
    q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, neg_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Bayesian personalised ranking: mean over every (query, negative) pair of −log σ(q̂·p̂ − q̂·n̂).

    q (n, d), pos (n, d), neg (n, k, d) or (k, d); neg_valid (n, k) bool leaves out padded negatives.
    Returns a scalar.
    """
    _check(q, pos)
    q, pos, neg = _normalise(q), _normalise(pos), _normalise(neg)
    pos_scores = (q * pos).sum(-1, keepdim=True)  # (n, 1)
    neg_scores = _negative_scores(q, neg)  # (n, k)
    _check_valid(neg_valid, neg_scores)
    per_pair = -F.logsigmoid(pos_scores - neg_scores)  # (n, k)
    if neg_valid is None:
        return per_pair.mean()
    return (per_pair * neg_valid).sum() / neg_valid.sum()


def info_nce_loss(
    q: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    temperature: float,
    in_batch: bool = False,
    neg_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE: mean cross-entropy of [q̂·p̂, q̂·n̂₁ … q̂·n̂ₖ] / temperature with the positive as target.

    in_batch=True appends the other rows' positives as further negatives (row i's logits gain
    q̂ᵢ·p̂ⱼ for j ≠ i). Callers must not repeat one query over several rows with different positives
    when using it, or a row's sibling positive becomes a false negative. neg_valid (n, k) bool
    leaves padded negatives out of the softmax.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check(q, pos)
    q, pos, neg = _normalise(q), _normalise(pos), _normalise(neg)
    pos_scores = (q * pos).sum(-1, keepdim=True)  # (n, 1)
    neg_scores = _negative_scores(q, neg)  # (n, k)
    _check_valid(neg_valid, neg_scores)
    if neg_valid is not None:
        neg_scores = neg_scores.masked_fill(~neg_valid, float("-inf"))  # exp(-inf) = 0: out of the softmax
    logits = [pos_scores, neg_scores]  # (n, 1), (n, k)
    if in_batch:
        n = q.shape[0]
        cross = q @ pos.T  # (n, n)
        off_diag = ~torch.eye(n, dtype=torch.bool, device=q.device)
        logits.append(cross[off_diag].reshape(n, n - 1))  # (n, n-1)
    logits_t = torch.cat(logits, dim=1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits_t, target)
