from __future__ import annotations


import numpy as np
import pytest

from onegen_core.config import LossConfig
from onegen_core.data import Passage, load_hotpotqa
from onegen_core.inference.document_encoding import encode_documents, unit_records
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.segments import Document
from onegen_core.prepare.documents import documents_from_multihop, documents_from_passages
from tests.stages.conftest import encode_setup


def test_unit_records_keep_doc_text():
    d = Document("p", ("A b.", " C d."), title="T", granularity="sentence")
    recs = unit_records(d)
    assert [r.id for r in recs] == ["p#0", "p#1"]
    assert [r.text for r in recs] == ["A b.", "C d."]
    assert {r.doc_text for r in recs} == {"A b. C d."}


def test_encoded_vectors_equal_training_vectors(char_tokenizer, tiny_lm):
    docs = [Document("a", ("xy", "z"), granularity="sentence"), Document("b", ("long text here",))]
    model = OneGenModel(tiny_lm.eval(), LossConfig())
    col = OneGenCollator(char_tokenizer, max_length=64)
    out = list(encode_documents(model, col, docs, batch_size=1))
    assert [[r.id for r in recs] for recs, _ in out] == [["a#0", "a#1"], ["b"]]
    vecs = np.concatenate([v for _, v in out])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # the same vectors the training step reads at [RD] positions
    import torch

    from onegen_core.method.segments import TrainingExample

    b = col([TrainingExample("c", "t", (), documents=tuple(docs))])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.vectors_at(b.doc_input_ids, b.doc_attention_mask, b.doc_index), dim=-1)
    np.testing.assert_allclose(vecs, ref.numpy(), atol=1e-5)


def test_truncated_units_are_counted(char_tokenizer, tiny_lm):
    from collections import Counter

    stats = Counter()
    col = OneGenCollator(char_tokenizer, max_length=64, max_doc_length=4)
    docs = [Document("a", ("xy", "zzzz"), granularity="sentence")]
    out = list(encode_documents(OneGenModel(tiny_lm, LossConfig()), col, docs, stats=stats))
    assert [r.id for r in out[0][0]] == ["a#0"] and stats["units_truncated"] == 1


def test_document_sources(shared_data):
    recs = load_hotpotqa(shared_data / "hotpotqa" / "dev_distractor_sample.json")
    docs = documents_from_multihop(recs, "sentence")
    assert len({d.id for d in docs}) == len(docs) > 1000
    pas = documents_from_passages([Passage("T", "One sentence. Another one.")], "sentence")
    assert pas[0].units == ("One sentence.", " Another one.")


@pytest.mark.slow
def test_encode_stage_resumes(tmp_path, char_tokenizer, tiny_lm, shared_data):
    pytest.importorskip("lancedb")
    from tasks import encode

    cfg = encode_setup(tmp_path, char_tokenizer, tiny_lm, shared_data, n_questions=2, max_doc_length=4096)
    first = encode.run(cfg)
    assert first["documents_encoded_now"] == first["documents"] == 20
    assert first["units_in_index"] > 20 and first["units_truncated"] == 0
    again = encode.run(cfg)  # nothing left to do
    assert again["documents_encoded_now"] == 0 and again["units_in_index"] == first["units_in_index"]
    # the table says what it holds: the files this stage read (`onegen index info`)
    from tasks.adapters.index_contents import contents
    from tasks.adapters.lance_index import LanceIndex

    held = contents(LanceIndex(cfg.uri, cfg.table))
    assert held["sources"] == [{"source": p, "by": "encode stage"} for p in (*cfg.hotpotqa, *cfg.wiki2, *cfg.passages)]
    assert held["sources"] and held["titles"]["distinct"] > 5 and len(held["titles"]["sample"]) == 8


@pytest.mark.slow
def test_encode_resume_never_duplicates_units(tmp_path, char_tokenizer, tiny_lm, shared_data):
    """A document whose last units were cut by truncation is re-encoded on every run (it is never
    complete); the units it already stored must not be added again."""
    pytest.importorskip("lancedb")
    from tasks import encode
    from tasks.adapters.lance_index import LanceIndex

    cfg = encode_setup(tmp_path, char_tokenizer, tiny_lm, shared_data, n_questions=1, max_doc_length=200)
    first = encode.run(cfg)
    assert first["units_truncated"] > 0  # some paragraph is longer than 200 characters
    again = encode.run(cfg)
    assert again["documents_encoded_now"] > 0 and again["units_in_index"] == first["units_in_index"]
    ids = [r.id for r in LanceIndex(cfg.uri, cfg.table).records()]
    assert len(ids) == len(set(ids))
