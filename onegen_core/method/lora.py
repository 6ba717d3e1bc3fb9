"""LoRA (peft) as an alternative to full fine-tuning — the paper leaves it as an open question.

The adapters go on the decoder's linear layers; the OneGen token rows ([RQ], [RD], <CON>, …) of the
input embedding (and of the output embedding: tied or not) stay trainable, because those rows are
new and a frozen mean-initialised row cannot learn to carry a query or document vector.
peft is imported lazily: `import onegen_core` stays light.
"""
from __future__ import annotations

import torch

from onegen_core.config import LoraSettings


def apply_lora(lm: torch.nn.Module, cfg: LoraSettings, token_ids: list[int]) -> torch.nn.Module:
    """Wrap `lm` in a peft model: adapters on `cfg.target_modules`, the rows `token_ids` of the
    embeddings trainable, everything else frozen."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules()}
    missing = [m for m in cfg.target_modules if m not in present]
    if missing:
        raise ValueError(f"lora.target_modules {missing} are not modules of {type(lm).__name__}")
    indices = {"embed_tokens": list(token_ids)}
    if not lm.config.tie_word_embeddings:
        indices["lm_head"] = list(token_ids)
    conf = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        trainable_token_indices=indices,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(lm, conf)


def merged(peft_lm: torch.nn.Module) -> torch.nn.Module:
    """The plain model with adapters and trained token rows folded in (loads with from_pretrained)."""
    return peft_lm.merge_and_unload()
