"""DVC stage `encode`: the trained model encodes every document as `{document} [RD]` into LanceDB.

Resumable: the table records the checkpoint; re-running with the same checkpoint skips documents whose
units are all stored and appends the rest, so an interrupted run loses at most one batch (one commit of
`ray_data.commit_every` documents with `encode.executor: ray`, where Ray Data actors hold model replicas on
the Ray of `distributed.ray_address`: tasks/adapters/ray_encoding.py).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time

from onegen_core.config import BackboneConfig, EncodeConfig, LossConfig, RayDataConfig
from onegen_core.data import load_2wiki, load_hotpotqa, load_kb, load_passages
from onegen_core.data.atomic_write import write_text_atomic
from onegen_core.data.errors import DataError
from onegen_core.data.kb import Entity
from onegen_core.method.backbone import checkpoint_id, load_pretrained
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.precision import resolve_inference_dtype
from onegen_core.method.segments import Document
from onegen_core.prepare.documents import documents_from_kb, documents_from_multihop, documents_from_passages
from tasks.adapters.index_contents import set_sources
from tasks.adapters.index_encoding import encode_table
from tasks.adapters.lance_index import AnnSettings
from tasks.adapters.table_lock import writer_lock
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


def kb_entities(cfg: EncodeConfig) -> list[Entity]:
    """The entity KB, then `kb_pages`' entries; an id in both files is an error naming the pages file."""
    entities = load_kb(cfg.kb)
    if not cfg.kb_pages:
        return entities
    ids = {e.id for e in entities}
    pages = load_kb(cfg.kb_pages)
    for n, page in enumerate(pages, start=1):
        if page.id in ids:
            raise DataError(cfg.kb_pages, f"entry {n}", "id", f"{page.id!r} is already an entity of {cfg.kb}")
    if not cfg.kb_pages_descriptions:  # title alone, as the trained KB entries are (encode.kb_pages_descriptions)
        pages = [dataclasses.replace(page, description="") for page in pages]
    log.info("entity table: %d KB entities + %d pages (%s, %s)", len(entities), len(pages), cfg.kb_pages,
             "with their passages" if cfg.kb_pages_descriptions else "titles alone")
    return entities + pages


def run(cfg: EncodeConfig, dtype: str = "float32", ray_data: RayDataConfig | None = None, ray_address: str = "") -> dict:
    """`dtype`: the checkpoint's weights dtype while encoding (params backbone.inference_dtype); `ray_data`:
    encode on Ray Data actors (`encode.executor: ray`) on the Ray of `ray_address` ('' = a local Ray)."""
    t0 = time.perf_counter()
    lm, tokenizer, _ = load_pretrained(cfg.checkpoint, BackboneConfig(name=cfg.checkpoint, dtype=dtype))
    ck = checkpoint_id(cfg.checkpoint)
    model = OneGenModel(lm, LossConfig()).eval()
    collator = OneGenCollator(tokenizer, max_length=cfg.max_doc_length, max_doc_length=cfg.max_doc_length)
    tables = [(cfg.table, collect_documents(cfg), "encode passages")]
    if cfg.kb:
        tables.append((cfg.kb_table, documents_from_kb(kb_entities(cfg)), "encode entities"))
    if ray_data is None:
        done = []
        for table, docs, desc in tables:
            with writer_lock(cfg.uri, table):  # `onegen index add` on the same table waits, and vice versa
                done.append(encode_table(model, collator, docs, cfg.uri, table, ck, cfg.batch_size, cfg.ann_min_rows,
                                         desc, AnnSettings.from_config(cfg)))
    else:
        from tasks.adapters.ray_encoding import encode_on_ray

        done = encode_on_ray(tables, cfg, ray_data, ray_address, dtype, lm.config.hidden_size, ck)
    # what each table holds, for `onegen index info` and `GET /v1/info`: the files this stage read
    set_sources(cfg.uri, cfg.table, [{"source": p, "by": "encode stage"}
                                     for p in (*cfg.hotpotqa, *cfg.wiki2, *cfg.passages)])
    if cfg.kb:
        set_sources(cfg.uri, cfg.kb_table, [{"source": p, "by": "encode stage"} for p in (cfg.kb, cfg.kb_pages) if p])
    report = {"checkpoint_id": ck, "uri": cfg.uri, **done[0].to_dict()}
    if cfg.kb:
        report["kb"] = done[1].to_dict()
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
    run(p.encode, resolve_inference_dtype(p.backbone.inference_dtype),
        p.ray_data if p.encode.executor == "ray" else None, p.distributed.ray_address)


if __name__ == "__main__":
    main()
