"""The checkpoint every Ray worker of a training run loads (`train_data.init_dir`).

Why one place builds it: a tiny backbone is a BPE tokenizer trained on the training texts plus seeded
random weights. Built once by the driver and saved, every rank and every resume start from the very same
weights and vocabulary; built by each rank, they would have to agree on every random draw.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from onegen_core.config import Params
from onegen_core.data.atomic_write import replace_dir
from tasks.adapters.run_fingerprint import initial_backbone_key

log = logging.getLogger("onegen.train")


def prepare_init(p: Params) -> str:
    """The checkpoint every worker loads. Tiny backbone: build it once here (BPE trained on the
    training texts, weights seeded) and save it, so all ranks and every resume start identical.
    Pretrained backbone: its own name/path (each rank adds the OneGen tokens the same way)."""
    if not p.backbone.is_tiny():
        return record_pretrained(p)
    from onegen_core.method.backbone import build_backbone, read_meta, save_checkpoint
    from onegen_core.training.dataset import load_examples, tokenizer_texts

    out = Path(p.train_data.init_dir)
    init_key = initial_backbone_key(p)
    if out.is_dir() and read_meta(out).get("init_key") == init_key:
        log.info("initial backbone %s is current (%s)", out, init_key)
        return str(out.resolve())
    examples = load_examples(p.train_data.train_file, p.train_data.tasks, p.train_data.caps())
    lm, tokenizer, _, meta = build_backbone(p.backbone, tokenizer_texts(examples, p.tokenizer.corpus),
                                            p.tokenizer.vocab_size, p.tokenizer.min_frequency, p.train.seed)
    # old or new backbone in `out`, never half of one: an interrupted build leaves the old one
    replace_dir(out, lambda tmp: save_checkpoint(lm, tokenizer, tmp, {**meta, "init_key": init_key}))
    log.info("built the initial tiny backbone in %s (%.2fM parameters)", out, sum(x.numel() for x in lm.parameters()) / 1e6)
    return str(out.resolve())


def record_pretrained(p: Params) -> str:
    """A pretrained backbone: every rank loads the named weights itself; the stage's `init_dir` output
    records which ones (DVC declares the folder, so it exists for either kind of backbone)."""
    from onegen_core.method.backbone import resolve_backbone_name

    name = resolve_backbone_name(p.backbone.name)
    out = Path(p.train_data.init_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrained.json").write_text(json.dumps({"backbone": p.backbone.name, "resolved": name}, indent=2) + "\n")
    return name
