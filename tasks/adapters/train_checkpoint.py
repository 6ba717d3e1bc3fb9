"""A training checkpoint: its layout, how a rank writes and restores its part, the trust boundary of a
resume, and how the driver publishes the final weights.

A checkpoint directory (Ray merges every rank's part into one) holds:
- `deepspeed/<tag>/`: DeepSpeed's sharded state (weights, optimizer, scheduler; client state `step`);
- `rng_rank<r>.safetensors`: rank r's RNG states — the CPU generator and every CUDA device's (dropout on a
  GPU draws from those) — so a resumed run draws what it would have drawn;
- `hf/` (rank 0): the full weights in Hugging Face format, LoRA merged in, loadable with from_pretrained;
- `state.json` (rank 0): step, total steps, DeepSpeed tag and Ray run name.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onegen_core.config import Params
from onegen_core.data.atomic_write import replace_dir
from tasks.adapters.worker_settings import WorkerSettings

if TYPE_CHECKING:  # the driver imports this module too: torch only where a rank writes or reads weights
    import torch

log = logging.getLogger("onegen.train_worker")

STATE_FILE = "state.json"
HF_DIR = "hf"
DS_DIR = "deepspeed"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.safetensors"


class UntrustedResume(PermissionError):
    """`distributed.resume_from` names a directory outside the run's storage path, without
    `distributed.trust_resume`."""


def check_resume_trust(resume_dir: str, storage_path: str, trusted: bool) -> None:
    """The trust boundary of a resume: DeepSpeed's `load_checkpoint` unpickles the optimizer and
    scheduler state it finds (`torch.load(weights_only=False)`), so a file there can run code. A
    checkpoint under `distributed.storage_path` was written by this project's runs; anything else is
    refused unless `distributed.trust_resume` says the user trusts it, and then the log says so."""
    if not resume_dir:
        return
    inside = False
    if "://" not in storage_path:
        inside = Path(resume_dir).resolve().is_relative_to(Path(storage_path).resolve())
    if inside:
        return
    if not trusted:
        raise UntrustedResume(
            f"distributed.resume_from={resume_dir} is outside distributed.storage_path={storage_path}: resuming "
            "unpickles the optimizer state found there (code can run). Move the checkpoint under the storage "
            "path, or set distributed.trust_resume=true if you trust its source")
    log.warning("distributed.trust_resume: resuming from %s, outside distributed.storage_path=%s; its pickled "
                "optimizer state is trusted", resume_dir, storage_path)


def chosen_resume_dir(p: Params) -> str:
    """The checkpoint `distributed.resume_from` chooses, resolved and past the trust boundary; "" for
    `auto` (Ray's own latest checkpoint of the run) and `never`."""
    resume = p.distributed.resume_from
    if resume in ("auto", "never"):
        return ""
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"distributed.resume_from={resume}: no such checkpoint directory")
    resume_dir = str(Path(resume).resolve())
    check_resume_trust(resume_dir, p.distributed.storage_path, p.distributed.trust_resume)
    return resume_dir


@dataclass
class TrainedModel:
    """What a rank trains and a checkpoint is written from."""

    engine: Any                   # the DeepSpeed engine wrapping the OneGenModel
    lm: torch.nn.Module           # the backbone inside it (peft-wrapped under LoRA)
    tokenizer: Any
    special: list[int]            # ids of the OneGen tokens (LoRA trains their embedding rows)
    zero3: bool                   # weights partitioned over ranks: gather them for the HF copy


def write_checkpoint(d: Path, model: TrainedModel, settings: WorkerSettings, rank: int, step: int, total: int) -> None:
    """Write this rank's part of the step-`step` checkpoint into `d` (rank 0 adds the HF copy and the
    state file). Every rank must call it: saving and gathering ZeRO-3 weights are collectives."""
    from safetensors.torch import save_file

    tag = f"step{step}"
    engine = model.engine
    engine.save_checkpoint(str(d / DS_DIR), tag=tag, client_state={"step": step})
    save_file(rng_states(), str(d / rng_file(rank)))
    full = engine._zero3_consolidated_16bit_state_dict() if model.zero3 else engine.module.state_dict()
    if rank == 0:
        save_hf(model, full, d / HF_DIR, settings, step)
        (d / STATE_FILE).write_text(json.dumps({"step": step, "total_steps": total, "tag": tag,
                                                "run_name": settings.run_name}))


def save_hf(model: TrainedModel, full: dict[str, torch.Tensor], out: Path, settings: WorkerSettings, step: int) -> None:
    """The full weights in Hugging Face format (LoRA merged in), loadable with from_pretrained."""
    from onegen_core.method.backbone import load_pretrained, save_checkpoint
    from onegen_core.method.lora import apply_lora, merged

    p = settings.params
    state = {k[len("lm."):]: v for k, v in full.items() if k.startswith("lm.")}
    meta = {"backbone": p.backbone.name, "tokenizer": "bpe-trained" if p.backbone.is_tiny() else "pretrained",
            "step": step, "run_name": settings.run_name, "lora": p.lora.enabled}
    if p.lora.enabled:
        # rebuild the peft model on CPU with the trained values, then fold the adapters in
        base, _, _ = load_pretrained(settings.init_dir, p.backbone)
        peft_lm = apply_lora(base, p.lora, model.special)
        peft_lm.load_state_dict(state, strict=True)
        save_checkpoint(merged(peft_lm), model.tokenizer, out, meta)
    else:
        save_checkpoint(model.lm, model.tokenizer, out, meta, state_dict=state)


def load_state(engine: Any, d: Path, rank: int) -> int:
    """Restore DeepSpeed's state and this rank's RNG from checkpoint `d`; returns the step it holds."""
    from safetensors.torch import load_file

    state = json.loads((d / STATE_FILE).read_text())
    path, client = engine.load_checkpoint(str(d / DS_DIR), tag=state["tag"])
    if path is None:
        raise RuntimeError(f"{d}: DeepSpeed could not load tag {state['tag']}")
    rng = d / rng_file(rank)
    if rng.exists():
        restore_rng_states(load_file(str(rng)))
    return int(client["step"])


def rng_states() -> dict[str, torch.Tensor]:
    """This process's generator states: `cpu`, and `cuda:<i>` for every CUDA device it can see."""
    import torch

    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda:{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_rng_states(states: dict[str, torch.Tensor]) -> None:
    """Set the generators `rng_states` saved. A checkpoint with CUDA states restored on a process that sees
    a different number of devices is an error: its dropout masks would differ from the run it resumes."""
    import torch

    torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted((k for k in states if k.startswith("cuda:")), key=lambda k: int(k[5:]))]
    if not cuda:
        return
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if seen != len(cuda):
        raise RuntimeError(f"the checkpoint holds the RNG states of {len(cuda)} CUDA devices, this process sees "
                           f"{seen}: a resumed run would not draw what the interrupted one would have")
    torch.cuda.set_rng_state_all(cuda)


def publish_checkpoint(checkpoint: Path, dst: Path) -> Path:
    """Copy the final checkpoint's Hugging Face weights into `dst` atomically (old or new, never half)."""
    src = checkpoint / HF_DIR
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: the final checkpoint has no Hugging Face weights")
    return replace_dir(dst, lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))
