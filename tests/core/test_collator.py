"""Collation: exact tensors on hand-built examples, separate padding, query→unit mapping, counts."""
from __future__ import annotations

import pytest
import torch

from onegen_core.method.collator import OneGenCollator
from onegen_core.method.encoding import IGNORE_INDEX
from onegen_core.method.segments import Document, Query, Retrieval, Text, TrainingExample
from tests.conftest import char_ids


def example(eid: str, docs: list[Document], pos: tuple[str, ...], neg: tuple[str, ...], prompt: str = "p") -> TrainingExample:
    return TrainingExample(
        id=eid,
        task="t",
        segments=(Text(prompt, generated=False), Retrieval("q"), Text("a", generated=True)),
        queries=(Query("q", pos, neg),),
        documents=tuple(docs),
    )


D1 = Document("d1", ("x", "y"), granularity="sentence")
D2 = Document("d2", ("zz",))
D3 = Document("d3", ("w",))


def test_exact_batch(char_tokenizer):
    col = OneGenCollator(char_tokenizer, max_length=64, share_negatives=False)
    e1 = example("e1", [D1, D2], ("d1#0",), ("d1#1", "d2"))
    e2 = example("e2", [D3, D2], ("d3",), (), prompt="ppp")  # d2 shared with e1: encoded once
    b = col([e1, e2])
    eos, pad, rq, rd = col.tok.ids.eos, col.tok.ids.pad, col.tok.ids.rq, col.tok.ids.rd
    p, a, x, y, z, w, sp = (char_ids(char_tokenizer, c)[0] for c in "paxyzw ")
    X = IGNORE_INDEX
    assert b.input_ids.tolist() == [[p, rq, a, eos, pad, pad], [p, p, p, rq, a, eos]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert b.labels.tolist() == [[rq, X, eos, X, X, X], [X, X, rq, X, eos, X]]
    # documents padded apart, in order of first appearance, deduplicated
    assert b.doc_input_ids.tolist() == [[x, rd, sp, y, rd], [z, z, rd, pad, pad], [w, rd, pad, pad, pad]]
    assert b.doc_attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert b.query_index.tolist() == [[0, 1], [1, 3]]
    assert b.unit_ids == ["d1#0", "d1#1", "d2", "d3"]
    assert b.unit_docs == ["d1", "d1", "d2", "d3"]
    assert b.doc_index.tolist() == [[0, 1], [0, 4], [1, 2], [2, 1]]
    assert b.positive_mask.tolist() == [[True, False, False, False], [False, False, False, True]]
    assert b.negative_mask.tolist() == [[False, True, True, False], [False, False, False, False]]
    assert b.own_mask.tolist() == [[True, True, True, False], [False, False, True, True]]
    assert b.query_ids == ["e1/q", "e2/q"]


def test_shared_negatives_come_from_other_examples_only(char_tokenizer):
    col = OneGenCollator(char_tokenizer, max_length=64, share_negatives=True)
    # e1 leaves d1#1 unlabelled (say, a later hop's gold): it must not become a negative of e1's query.
    e1 = example("e1", [D1], ("d1#0",), ())
    e2 = example("e2", [D3], ("d3",), ())
    b = col([e1, e2])
    assert b.unit_ids == ["d1#0", "d1#1", "d3"]
    assert b.negative_mask.tolist() == [[False, False, True], [True, True, False]]


def test_truncated_positive_is_counted(char_tokenizer):
    col = OneGenCollator(char_tokenizer, max_length=64, max_doc_length=3, share_negatives=False)
    b = col([example("e1", [D1], ("d1#1",), ("d1#0",))])  # d1#1's [RD] is at position 4: cut
    assert b.unit_ids == ["d1#0"]
    assert not b.positive_mask.any()
    assert b.stats["queries_positives_truncated"] == 1
    assert b.stats["queries_without_positive"] == 1
    assert b.stats["units_truncated"] == 1


def test_truncated_query_is_counted(char_tokenizer):
    col = OneGenCollator(char_tokenizer, max_length=3)
    b = col([example("e1", [D1], ("d1#0",), (), prompt="long")])
    assert b.query_index.shape == (0, 2)
    assert b.stats["queries"] == 1 and b.stats["queries_truncated"] == 1
    assert b.stats["sequences_truncated"] == 1


def test_conflicting_documents_are_an_error(char_tokenizer):
    col = OneGenCollator(char_tokenizer, max_length=64)
    other = Document("d2", ("different",))
    with pytest.raises(ValueError, match="document 'd2' differs"):
        col([example("e1", [D2], ("d2",), ()), example("e2", [other], ("d2",), ())])


def test_batch_moves_to_device(char_tokenizer):
    b = OneGenCollator(char_tokenizer, max_length=64)([example("e1", [D1], ("d1#0",), ())])
    assert b.to(torch.device("cpu")).input_ids.device.type == "cpu"
