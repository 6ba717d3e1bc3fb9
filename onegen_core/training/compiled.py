"""`train.compile`: the decoder layers that train run through torch.compile (TorchInductor).

Why: on a CPU a training step of the top layers spends about a third of its time outside matrix
products, in element-wise kernels (RMSNorm in float32, rotary embedding, SiLU, the casts autocast adds
around them); Inductor fuses them. Measured on the embedded default (SmolLM2-135M, top 12 layers,
bfloat16 autocast, 2 cores): forward+backward of the epoch's first 9 steps 32.4 s → 25.7 s after a ~36 s
compilation; the whole `train` stage (210 steps, Ray + DeepSpeed) 1,796 s → 1,201 s, with the same validation
figures within rounding (docs/RESULTS.md, 2026-12-06 evening).

Only the trainable layers: the frozen ones run once per sequence (their output is cached,
`frozen_layers`), and compiling them measured no gain (20 batches of cache filling 19.1 s → 18.3 s plus
9 s of compilation). `dynamic=True` because every batch has its own sequence length: one graph for all
lengths instead of a recompilation per length. The weights, the state dict and the checkpoint are those
of the uncompiled modules (`nn.Module.compile` compiles in place), so inference loads them as usual.
Under LoRA (`lora.enabled`) the peft-wrapped layers compile the same way and merge into the same plain
checkpoint (tests/test_compiled.py); ZeRO-3 is refused (`tasks.adapters.deepspeed_config.check_compile_support`).
"""
from __future__ import annotations

import torch

from onegen_core.method.frozen_layers import decoder_of


def compile_top_layers(lm: torch.nn.Module, trainable_layers: int) -> int:
    """Compile the top `trainable_layers` decoder layers of `lm` in place (0 = every layer); returns how
    many were compiled. Numerics change only by the rounding of fused kernels."""
    import torch._dynamo

    # one graph per combination the layers meet: with and without gradients (validation), an input that
    # requires grad or not (the first trainable layer reads the cache), a padding mask or none, one row
    # or more (Dynamo specialises sizes 0 and 1): up to 12, above the default limit of 8, past which
    # Dynamo would silently run the rest eagerly
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    layers = decoder_of(lm).layers
    n = len(layers) if trainable_layers <= 0 else min(trainable_layers, len(layers))
    for layer in layers[len(layers) - n:]:
        layer.compile(dynamic=True)
    return n
