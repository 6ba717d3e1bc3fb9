"""DeepSpeed config: read a file of `infra/deepspeed/`, fill its "auto" values from params, and
validate the result with DeepSpeed's own parser (the one `deepspeed.initialize` runs).

"auto" follows the Hugging Face integration's meaning, so the same files work there too: batch
sizes and clipping come from `train`, precision from `distributed.bf16`, bucket sizes from the
backbone's hidden size.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from onegen_core.config import Params


def load_ds_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DeepSpeed config missing (distributed.deepspeed_config)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def fill_auto(cfg: dict[str, Any], p: Params, world_size: int, hidden_size: int) -> dict[str, Any]:
    """A copy of `cfg` with every "auto" replaced; an "auto" this function does not know is an error."""
    out = copy.deepcopy(cfg)
    t = p.train
    values = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.batch_size * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip,
        "bf16.enabled": p.distributed.bf16,
        "fp16.enabled": False,
        # the Hugging Face integration's rule of thumb for ZeRO-3 buckets
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            elif v == "auto":
                if key not in values:
                    raise ValueError(f"DeepSpeed config: no rule to fill '{key}': \"auto\"")
                node[k] = values[key]

    walk(out, "")
    return out


def validate(cfg: dict[str, Any], world_size: int) -> Any:
    """Parse with `deepspeed.runtime.config.DeepSpeedConfig`: unknown ZeRO keys, bad types and
    inconsistent batch sizes raise. Batch sizes are checked against `world_size`."""
    import torch.distributed as dist
    from deepspeed.runtime.config import DeepSpeedConfig

    want = cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * world_size
    if cfg["train_batch_size"] != want:
        raise ValueError(f"train_batch_size {cfg['train_batch_size']} != micro {cfg['train_micro_batch_size_per_gpu']}"
                         f" x accumulation {cfg['gradient_accumulation_steps']} x {world_size} ranks")
    if dist.is_available() and dist.is_initialized():
        return DeepSpeedConfig(cfg)
    # outside a process group DeepSpeed's parser assumes one rank: parse the one-rank equivalent
    one = {**cfg, "train_batch_size": want // world_size}
    return DeepSpeedConfig(one)


def resolved_ds_config(p: Params, world_size: int, hidden_size: int) -> dict[str, Any]:
    cfg = fill_auto(load_ds_config(p.distributed.deepspeed_config), p, world_size, hidden_size)
    # the worker always hands DeepSpeed a torch AdamW (DeepSpeed's own Adam compiles C++ on first use),
    # which ZeRO accepts only with this flag, on CPU and GPU alike
    cfg.setdefault("zero_allow_untested_optimizer", True)
    return cfg


def zero_stage(cfg: dict[str, Any]) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 when it names none)."""
    return cfg.get("zero_optimization", {}).get("stage", 0)


def check_compile_support(cfg: dict[str, Any], p: Params) -> None:
    """`train.compile` with a ZeRO-3 config is a `ConfigError`: ZeRO-3 gathers each layer's partitioned
    weights in module hooks that torch.compile does not trace."""
    from onegen_core.config import ConfigError

    if p.train.compile and zero_stage(cfg) == 3:
        raise ConfigError(f"train.compile: true does not go with the ZeRO-3 config {p.distributed.deepspeed_config} "
                          "(distributed.deepspeed_config); set train.compile: false")
