"""Held-out losses of a model on examples, without gradients (for before/after comparisons)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.segments import TrainingExample


@torch.no_grad()
def held_out_losses(
    model: OneGenModel,
    collator: OneGenCollator,
    examples: Sequence[TrainingExample],
    batch_size: int = 4,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Token-weighted Lg and pair-weighted Lr over `examples`, with a fixed pair-sampling seed so
    two models are compared on the same pairs."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    lm_sum = ret_sum = 0.0
    tokens = pairs = 0
    for i in range(0, len(examples), batch_size):
        out = model(collator(list(examples[i:i + batch_size])).to(device), generator=gen)
        if out.n_gen_tokens:
            lm_sum += float(out.lm_loss) * out.n_gen_tokens
            tokens += out.n_gen_tokens
        if out.n_pairs:
            ret_sum += float(out.retrieval_loss) * out.n_pairs
            pairs += out.n_pairs
    if was_training:
        model.train()
    nan = float("nan")
    return {"lm_loss": lm_sum / tokens if tokens else nan, "retrieval_loss": ret_sum / pairs if pairs else nan,
            "gen_tokens": float(tokens), "pairs": float(pairs)}
