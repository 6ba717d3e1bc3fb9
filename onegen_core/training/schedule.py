"""Learning-rate schedule as a pure function of the step (nanoGPT's get_lr)."""
from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int, min_lr_ratio: float = 0.1,
          shape: str = "cosine") -> float:
    """Linear warm-up to `peak_lr`, then cosine (or linear) decay to `peak_lr * min_lr_ratio` at
    `total_steps`.

    `step` counts optimizer steps from 0; the value is the lr used *for* that step.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    min_lr = peak_lr * min_lr_ratio
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if shape == "linear":
        return min_lr + (1.0 - progress) * (peak_lr - min_lr)
    if shape != "cosine":
        raise ValueError(f"unknown schedule shape {shape!r}")
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak_lr - min_lr)
