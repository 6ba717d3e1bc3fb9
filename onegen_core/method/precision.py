"""Which reduced precision this machine computes fast: the `auto` settings (`train.autocast`,
`backbone.inference_dtype`) resolve here.

bfloat16 halves the bytes per weight and, where the hardware has bfloat16 arithmetic, about doubles CPU
throughput (measured on AVX512-BF16 Xeons: encode/evaluate ~2x). Where it has not, PyTorch emulates it:
on an AVX2-only AMD EPYC of this project's machine kind a 1024x576 @ 576x1536 matmul took 0.14 s in
bfloat16 autocast against 0.019 s in float32 (7x slower), so a bfloat16 default made a run several times
slower there. `auto` therefore takes bfloat16 only where it is native: a CUDA device that supports it,
or a CPU on which oneDNN runs bfloat16 kernels (AVX512-BW/VL/DQ, AVX512-BF16, AMX, or ARM BF16).
"""
from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger("onegen.precision")


@functools.cache
def bf16_is_fast(device_type: str = "cpu") -> bool:
    """True where bfloat16 runs in hardware kernels on `device_type` ('cpu' or 'cuda')."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        fast = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        fast = False
    log.info("bfloat16 on this CPU (%s): %s", torch.backends.cpu.get_cpu_capability(),
             "native (oneDNN kernels)" if fast else "emulated, float32 is used for 'auto'")
    return fast


def resolve_autocast(setting: str, device_type: str = "cpu") -> str:
    """params `train.autocast` → 'bfloat16' or 'none' ('auto': bfloat16 where it is native)."""
    if setting == "auto":
        return "bfloat16" if bf16_is_fast(device_type) else "none"
    if setting not in ("none", "bfloat16"):
        raise ValueError(f"train.autocast must be 'auto', 'none' or 'bfloat16', got {setting!r}")
    return setting


def autocast_dtype(setting: str, device_type: str = "cpu") -> torch.dtype:
    """The compute dtype `setting` resolves to (the frozen layers' cache is kept in it)."""
    return torch.bfloat16 if resolve_autocast(setting, device_type) == "bfloat16" else torch.float32


def resolve_inference_dtype(setting: str, device_type: str = "cpu") -> str:
    """params `backbone.inference_dtype` → a dtype name ('auto': bfloat16 where native, else float32)."""
    if setting == "auto":
        return "bfloat16" if bf16_is_fast(device_type) else "float32"
    return setting
