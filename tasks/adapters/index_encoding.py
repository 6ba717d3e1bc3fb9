"""Documents → their [RD] vectors in a LanceDB table, resumably: what the encode stage does to the corpus and
the KB, and what `onegen index add` does to a user's documents, through this one function.

Resumable: the table records the checkpoint that encoded it (`LanceIndex.create` keeps a table of the same
checkpoint), and a document whose units are all stored is skipped, so an interrupted run loses at most one
batch and a re-run adds nothing.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from onegen_core.inference.document_encoding import encode_documents
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.segments import Document
from tasks.adapters.lance_index import AnnSettings, LanceIndex

# the encode stage's logger: its lines keep the name they had when this function lived in the stage
log = logging.getLogger("onegen.encode")


@dataclass(frozen=True)
class EncodedTable:
    """What one `encode_table` call did; `to_dict` is its entry in the encode report (fields in order)."""

    table: str
    documents: int  # documents asked for
    documents_encoded_now: int  # documents not (fully) stored before this call
    units_in_index: int  # rows of the table afterwards
    units_truncated: int  # units whose [RD] fell past the collator's max_doc_length (not stored)
    documents_truncated: int
    ann_index: bool  # whether an ANN index was built (tables of at least ann_min_rows rows)
    ray_nodes: tuple[str, ...] = ()  # encode.executor ray: the nodes whose replicas encoded (empty locally)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.ray_nodes:  # the local report keeps the keys it always had
            del d["ray_nodes"]
        else:
            d["ray_nodes"] = list(self.ray_nodes)
        return d


def encode_table(model: OneGenModel, collator: OneGenCollator, docs: Sequence[Document], uri: str, table: str,
                 ck: str, batch_size: int, ann_min_rows: int, desc: str, ann: AnnSettings | None = None) -> EncodedTable:
    """Encode `docs` into `uri`/`table` with the checkpoint whose id is `ck`, skipping documents whose units
    are all stored (resume); `desc` labels the progress bar; `ann` sizes the ANN index (params encode.ann_*)."""
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
        index.add([records[i] for i in keep], vectors[keep])  # vectors: (n_units, dim)
        done.update(records[i].id for i in keep)
    bar.close()
    return EncodedTable(
        table=table,
        documents=len(docs),
        documents_encoded_now=len(todo),
        units_in_index=len(index),
        units_truncated=stats.get("units_truncated", 0),
        documents_truncated=stats.get("documents_truncated", 0),
        ann_index=index.build_ann_index(ann_min_rows, ann),
    )
