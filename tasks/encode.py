"""DVC stage `encode`: the trained model encodes every document as `{document} [RD]` into LanceDB.

Resumable: the table records the checkpoint; re-running with the same checkpoint skips documents whose
units are all stored and appends the rest, so an interrupted run loses at most one batch.
"""
from __future__ import annotations

import json
import logging
import time

from onegen_core.config import BackboneConfig, EncodeConfig, LossConfig
from onegen_core.data import load_2wiki, load_hotpotqa, load_kb, load_passages
from onegen_core.data.atomic_write import write_text_atomic
from onegen_core.method.backbone import checkpoint_id, load_pretrained
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.precision import resolve_inference_dtype
from onegen_core.method.segments import Document
from onegen_core.prepare.documents import documents_from_kb, documents_from_multihop, documents_from_passages
from tasks.adapters.index_encoding import encode_table
from tasks.stage_common import stage_params

log = logging.getLogger("onegen.encode")


def collect_documents(cfg: EncodeConfig) -> list[Document]:
    """The documents of `encode`'s corpus files, at `encode.granularity`; of two with one id (a paragraph
    in two files) the first is kept, so each is encoded once."""
    docs = []
    for path in cfg.hotpotqa:
        docs += documents_from_multihop(load_hotpotqa(path), cfg.granularity)
    for path in cfg.wiki2:
        docs += documents_from_multihop(load_2wiki(path), cfg.granularity)
    for path in cfg.passages:
        docs += documents_from_passages(load_passages(path), cfg.granularity)
    unique = {}
    for d in docs:
        unique.setdefault(d.id, d)
    return list(unique.values())


def run(cfg: EncodeConfig, dtype: str = "float32") -> dict:
    """`dtype`: the checkpoint's weights dtype while encoding (params backbone.inference_dtype)."""
    t0 = time.perf_counter()
    lm, tokenizer, _ = load_pretrained(cfg.checkpoint, BackboneConfig(name=cfg.checkpoint, dtype=dtype))
    ck = checkpoint_id(cfg.checkpoint)
    model = OneGenModel(lm, LossConfig()).eval()
    collator = OneGenCollator(tokenizer, max_length=cfg.max_doc_length, max_doc_length=cfg.max_doc_length)
    units = encode_table(model, collator, collect_documents(cfg), cfg.uri, cfg.table, ck, cfg.batch_size,
                         cfg.ann_min_rows, "encode passages")
    report = {"checkpoint_id": ck, "uri": cfg.uri, **units.to_dict()}
    if cfg.kb:
        kb_docs = documents_from_kb(load_kb(cfg.kb))
        report["kb"] = encode_table(model, collator, kb_docs, cfg.uri, cfg.kb_table, ck, cfg.batch_size,
                                    cfg.ann_min_rows, "encode entities").to_dict()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_text_atomic(cfg.report_path, json.dumps(report, indent=2))  # no final newline, as it always was
    log.info("encoded: %s", report)
    for part in (report, report.get("kb") or {}):
        if part.get("units_truncated"):
            log.warning("%s: %d units lost their [RD] to truncation at %d tokens (raise encode.max_doc_length)",
                        part["table"], part["units_truncated"], cfg.max_doc_length)
    return report


def main(argv: list[str] | None = None) -> None:
    p = stage_params(__doc__, argv)
    run(p.encode, resolve_inference_dtype(p.backbone.inference_dtype))


if __name__ == "__main__":
    main()
