"""Batches of training examples → padded tensors plus the query/document mapping.

Rows: the main sequences of the examples, and, padded apart, one row per distinct document of the
batch (deduplicated by id). Padding is to the longest row of each group (never to a fixed max length,
which wastes most of the compute on short batches). The collator pads and indexes; all label decisions were
made by `encoding` from the example structure.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from onegen_core.method.encoding import IGNORE_INDEX, EncodedSequence, SegmentTokenizer, encode_document, encode_example
from onegen_core.method.segments import Document, Role, TrainingExample


@dataclass
class Batch:
    """Main sequences and document sequences are padded separately: documents are short and
    numerous, and padding them to the longest main sequence multiplied the decoder's work several
    times over. Rows are independent in a causal LM, so this changes no value."""

    input_ids: torch.Tensor  # (n_main, seq) long: main sequences
    attention_mask: torch.Tensor  # (n_main, seq) long, 1 = real token
    labels: torch.Tensor  # (n_main, seq) long, position-aligned targets, -100 off GEN positions
    roles: torch.Tensor  # (n_main, seq) long, Role values; padding is CTX
    doc_input_ids: torch.Tensor  # (n_docs, doc_seq) long: one row per distinct document
    doc_attention_mask: torch.Tensor  # (n_docs, doc_seq) long
    query_index: torch.Tensor  # (n_queries, 2) long: (main row, position) of each kept [RQ]
    doc_index: torch.Tensor  # (n_units, 2) long: (doc row, position) of each kept [RD]
    positive_mask: torch.Tensor  # (n_queries, n_units) bool
    negative_mask: torch.Tensor  # (n_queries, n_units) bool: candidate negatives
    own_mask: torch.Tensor  # (n_queries, n_units) bool: units of the query's own example (its candidates)
    query_ids: list[str]  # "<example id>/<query id>", aligned with query_index
    unit_ids: list[str]  # aligned with doc_index
    unit_docs: list[str]  # document id of each unit, aligned with doc_index
    stats: Counter = field(default_factory=Counter)

    _TENSORS = ("input_ids", "attention_mask", "labels", "roles", "doc_input_ids", "doc_attention_mask",
                "query_index", "doc_index", "positive_mask", "negative_mask", "own_mask")

    def to(self, device: torch.device | str) -> "Batch":
        for name in self._TENSORS:
            setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def n_gen_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens of main and document rows."""
        return int(self.attention_mask.sum()) + int(self.doc_attention_mask.sum())


class OneGenCollator:
    """Callable collator: `OneGenCollator(tokenizer, max_length=...)(examples) -> Batch`.

    share_negatives: every document unit of the *other* examples in the batch is an extra negative for
    a query (the paper's negatives shared across the batch). Units of the query's own example are
    governed only by its explicit labels, so a unit labelled neither positive nor negative there (e.g.
    the gold passage of a later hop) is never turned into a false negative.
    """

    def __init__(
        self,
        tokenizer,
        max_length: int,
        max_doc_length: int | None = None,
        share_negatives: bool = True,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self.tok = tokenizer if isinstance(tokenizer, SegmentTokenizer) else SegmentTokenizer(tokenizer)
        self.max_length = max_length
        self.max_doc_length = max_doc_length or max_length
        self.share_negatives = share_negatives
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[TrainingExample]) -> Batch:
        stats: Counter = Counter()
        main = [encode_example(ex, self.tok, self.max_length) for ex in examples]
        docs: dict[str, Document] = {}
        for ex in examples:
            for d in ex.documents:
                seen = docs.setdefault(d.id, d)
                if seen.units != d.units:
                    raise ValueError(f"example {ex.id!r}: document {d.id!r} differs from the one of the same id "
                                     "in another example of the batch")
        doc_rows = [encode_document(d, self.tok, self.max_doc_length) for d in docs.values()]

        stats["examples"] += len(examples)
        stats["sequences_truncated"] += sum(s.truncated for s in main)
        stats["documents"] += len(doc_rows)
        stats["documents_truncated"] += sum(s.truncated for s in doc_rows)
        stats["units_truncated"] += sum(len(s.dropped_docs) for s in doc_rows)

        unit_ids: list[str] = []
        unit_docs: list[str] = []
        doc_index: list[tuple[int, int]] = []
        for r, (doc_id, seq) in enumerate(zip(docs, doc_rows)):
            for pos, uid in seq.docs:
                doc_index.append((r, pos))
                unit_ids.append(uid)
                unit_docs.append(doc_id)
        unit_col = {u: j for j, u in enumerate(unit_ids)}

        query_ids: list[str] = []
        query_index: list[tuple[int, int]] = []
        pos_rows: list[list[int]] = []
        neg_rows: list[list[int]] = []
        own_rows: list[list[int]] = []
        for e, (ex, seq) in enumerate(zip(examples, main)):
            stats["queries"] += len(seq.queries) + len(seq.dropped_queries)
            stats["queries_truncated"] += len(seq.dropped_queries)
            own_units = {u for d in ex.documents for u in d.unit_ids()}
            for pos, qid in seq.queries:
                q = ex.query(qid)
                positives = [unit_col[u] for u in q.positives if u in unit_col]
                if q.positives and not positives:
                    # The positives existed but their [RD]s were truncated away: the query can no
                    # longer be trained; say so rather than silently training it on negatives only.
                    stats["queries_positives_truncated"] += 1
                if not positives:
                    stats["queries_without_positive"] += 1
                negatives = {unit_col[u] for u in q.negatives if u in unit_col}
                if self.share_negatives:
                    negatives.update(j for j, u in enumerate(unit_ids) if u not in own_units)
                negatives.difference_update(positives)
                query_ids.append(f"{ex.id}/{qid}")
                query_index.append((e, pos))
                pos_rows.append(positives)
                neg_rows.append(sorted(negatives))
                own_rows.append([unit_col[u] for u in own_units if u in unit_col])

        n_q, n_u = len(query_ids), len(unit_ids)
        positive_mask = torch.zeros(n_q, n_u, dtype=torch.bool)
        negative_mask = torch.zeros(n_q, n_u, dtype=torch.bool)
        own_mask = torch.zeros(n_q, n_u, dtype=torch.bool)
        for i, (p, n, o) in enumerate(zip(pos_rows, neg_rows, own_rows)):
            positive_mask[i, p] = True
            negative_mask[i, n] = True
            own_mask[i, o] = True

        input_ids, attention_mask, labels, roles = self._pad(main)
        doc_input_ids, doc_attention_mask, _, _ = self._pad(doc_rows)
        return Batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            roles=roles,
            doc_input_ids=doc_input_ids,
            doc_attention_mask=doc_attention_mask,
            query_index=torch.tensor(query_index, dtype=torch.long).reshape(-1, 2),
            doc_index=torch.tensor(doc_index, dtype=torch.long).reshape(-1, 2),
            positive_mask=positive_mask,
            negative_mask=negative_mask,
            own_mask=own_mask,
            query_ids=query_ids,
            unit_ids=unit_ids,
            unit_docs=unit_docs,
            stats=stats,
        )

    def _pad(self, rows: list[EncodedSequence]) -> tuple[torch.Tensor, ...]:
        width = max((len(s.input_ids) for s in rows), default=0)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        n = len(rows)
        input_ids = torch.full((n, width), self.tok.ids.pad, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        roles = torch.full((n, width), int(Role.CTX), dtype=torch.long)
        for r, s in enumerate(rows):
            k = len(s.input_ids)
            input_ids[r, :k] = torch.tensor(s.input_ids)
            attention_mask[r, :k] = 1
            labels[r, :k] = torch.tensor(s.labels)
            roles[r, :k] = torch.tensor(s.roles)
        return input_ids, attention_mask, labels, roles
