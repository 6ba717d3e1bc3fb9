"""DVC stage `encode`: the trained model encodes every document as `{document} [RD]` into LanceDB.

Resumable: the table records the checkpoint; re-running with the same checkpoint skips documents whose
units are all stored and appends the rest, so an interrupted run loses at most one batch.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

from onegen_core.config import BackboneConfig, EncodeConfig, LossConfig
from onegen_core.data import load_2wiki, load_hotpotqa, load_kb, load_passages
from onegen_core.inference.document_encoding import encode_documents
from onegen_core.method.backbone import checkpoint_id, load_pretrained
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.precision import resolve_inference_dtype
from onegen_core.prepare.documents import documents_from_kb, documents_from_multihop, documents_from_passages
from tasks.lance_index import LanceIndex
from tasks.stage_common import stage_params

log = logging.getLogger("onegen.encode")


def collect_documents(cfg: EncodeConfig) -> list:
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


def encode_table(model, collator, docs: list, uri: str, table: str, ck: str, batch_size: int, ann_min_rows: int,
                 desc: str) -> dict:
    """Encode `docs` into `uri`/`table`, skipping documents whose units are all stored (resume)."""
    from tqdm.auto import tqdm

    index = LanceIndex.create(uri, model.lm.config.hidden_size, ck, table)
    done = index.ids()
    todo = [d for d in docs if not set(d.unit_ids()) <= done]
    log.info("%s: %d documents (%d units); %d already encoded by checkpoint %s; encoding %d", table,
             len(docs), sum(len(d.unit_ids()) for d in docs), len(docs) - len(todo), ck, len(todo))
    stats: Counter = Counter()
    bar = tqdm(total=len(todo), desc=desc, unit="doc")
    for records, vectors in encode_documents(model, collator, todo, batch_size, on_batch=bar.update, stats=stats):
        # a document re-encoded on resume may already hold some units (others were cut by truncation)
        keep = [i for i, r in enumerate(records) if r.id not in done]
        index.add([records[i] for i in keep], vectors[keep])
        done.update(records[i].id for i in keep)
    bar.close()
    return {
        "table": table,
        "documents": len(docs),
        "documents_encoded_now": len(todo),
        "units_in_index": len(index),
        "units_truncated": stats.get("units_truncated", 0),
        "documents_truncated": stats.get("documents_truncated", 0),
        "ann_index": index.build_ann_index(ann_min_rows),
    }


def run(cfg: EncodeConfig, dtype: str = "float32") -> dict:
    """`dtype`: the checkpoint's weights dtype while encoding (params backbone.inference_dtype)."""
    t0 = time.perf_counter()
    lm, tokenizer, _ = load_pretrained(cfg.checkpoint, BackboneConfig(name=cfg.checkpoint, dtype=dtype))
    ck = checkpoint_id(cfg.checkpoint)
    model = OneGenModel(lm, LossConfig()).eval()
    collator = OneGenCollator(tokenizer, max_length=cfg.max_doc_length, max_doc_length=cfg.max_doc_length)
    units = encode_table(model, collator, collect_documents(cfg), cfg.uri, cfg.table, ck, cfg.batch_size,
                         cfg.ann_min_rows, "encode passages")
    report = {"checkpoint_id": ck, "uri": cfg.uri, **units}
    if cfg.kb:
        kb_docs = documents_from_kb(load_kb(cfg.kb))
        report["kb"] = encode_table(model, collator, kb_docs, cfg.uri, cfg.kb_table, ck, cfg.batch_size,
                                    cfg.ann_min_rows, "encode entities")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(cfg.report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.report_path).write_text(json.dumps(report, indent=2))
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
