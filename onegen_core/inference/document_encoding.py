"""Corpus encoding: every document through the model as `{document} [RD]` (or one [RD] per
sentence), batched, yielding unit metadata and L2-normalised vectors for an index to store."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

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


def rd_read_texts(records: Sequence[UnitRecord]) -> list[str]:
    """What each unit's [RD] has read, as plain text: `Title: ` and the document up to the end of the unit.

    A sentence [RD] sits after its sentence in `Title: s0 [RD] s1 [RD] …`, so causal attention has shown
    it the title and every earlier sentence; a document [RD] has read the whole document. A separate
    retriever given this text sees what OneGen's vector saw (issue: baselines on equal footing). Units
    are ordered by their `doc#k` id within a document; a unit not found in its document's text (it
    cannot happen for rows `unit_records` wrote) falls back to the unit texts so far, joined by spaces."""
    by_doc: dict[str, list[tuple[int, int]]] = {}
    for i, r in enumerate(records):
        k = r.id.rsplit("#", 1)[-1] if r.id != r.doc_id else "0"
        by_doc.setdefault(r.doc_id, []).append((int(k) if k.isdigit() else 0, i))
    out = [""] * len(records)
    for doc_id, members in by_doc.items():
        cursor, seen = 0, []
        for _, i in sorted(members):
            r = records[i]
            seen.append(r.text)
            pos = r.doc_text.find(r.text, cursor) if r.text else -1
            if pos >= 0:
                cursor = pos + len(r.text)
                read = r.doc_text[:cursor]
            else:
                read = " ".join(seen)
            out[i] = f"{r.title}: {read}" if r.title else read
    return out


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
