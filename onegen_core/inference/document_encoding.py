"""Corpus encoding: every document through the model as `{document} [RD]` (or one [RD] per
sentence), batched, yielding unit metadata and L2-normalised vectors for an index to store."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from onegen_core.inference.index import UnitRecord
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.encoding import document_text
from onegen_core.method.model import OneGenModel
from onegen_core.method.segments import Document, TrainingExample


def unit_records(doc: Document) -> list[UnitRecord]:
    full = document_text(doc).removeprefix(f"{doc.title}: " if doc.title else "")
    if doc.granularity == "sentence":
        return [UnitRecord(uid, doc.id, doc.title, u.strip(), full) for uid, u in zip(doc.unit_ids(), doc.units)]
    return [UnitRecord(doc.id, doc.id, doc.title, full, full)]


@torch.no_grad()
def encode_documents(
    model: OneGenModel,
    collator: OneGenCollator,
    documents: Iterable[Document],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
    stats: Counter | None = None,
) -> Iterator[tuple[list[UnitRecord], np.ndarray]]:
    """Yield (records, vectors (n, dim) float32) per batch of documents. A unit whose [RD] was cut
    by `collator.max_doc_length` is not yielded; it is counted in `stats['units_truncated']`."""
    model.eval()
    device = next(model.parameters()).device
    batch: list[Document] = []

    def flush() -> tuple[list[UnitRecord], np.ndarray]:
        # documents ride in a carrier example with no main text: only their rows are encoded
        carrier = TrainingExample(id="corpus", task="encode", segments=(), documents=tuple(batch))
        b = collator([carrier]).to(device)
        vec = model.vectors_at(b.doc_input_ids, b.doc_attention_mask, b.doc_index)  # (n_units, dim)
        by_id = {r.id: r for d in batch for r in unit_records(d)}
        records = [by_id[u] for u in b.unit_ids]
        if stats is not None:
            stats.update({k: v for k, v in b.stats.items() if k.startswith(("documents", "units"))})
        if on_batch:
            on_batch(len(batch))
        return records, F.normalize(vec.float(), dim=-1).cpu().numpy()

    for doc in documents:
        batch.append(doc)
        if len(batch) == batch_size:
            yield flush()
            batch = []
    if batch:
        yield flush()
