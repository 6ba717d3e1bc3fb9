"""The wrapper's losses and vectors agree with the plain Hugging Face model."""
from __future__ import annotations

import pytest
import torch

from onegen_core.config import LossConfig
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.encoding import IGNORE_INDEX
from onegen_core.method.model import OneGenModel, gather_positions
from onegen_core.method.segments import Document, Query, Retrieval, Text, TrainingExample
from onegen_core.method.tokens import RD, RQ


def examples() -> list[TrainingExample]:
    docs = (Document("a", ("apples are red",)), Document("b", ("bananas are long", " and yellow"), granularity="sentence"))
    return [
        TrainingExample("e1", "t", (Text("find apples", False), Retrieval("q"), Text(" ok", True)),
                        (Query("q", ("a",), ("b#0", "b#1")),), docs),
        TrainingExample("e2", "t", (Text("find a long fruit please", False), Text(" hm", True), Retrieval("q"),
                                    Text(" done", True)), (Query("q", ("b#0",), ("a",)),), docs),
    ]


def hf_labels(labels: torch.Tensor) -> torch.Tensor:
    """Our position-aligned labels → Hugging Face's token-aligned labels (shifted inside the model)."""
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, 1:] = labels[:, :-1]
    return out


def test_lm_loss_equals_hugging_face_loss(char_tokenizer, tiny_lm):
    batch = OneGenCollator(char_tokenizer, max_length=128)(examples())
    model = OneGenModel(tiny_lm, LossConfig(lambda_r=0.0))
    out = model(batch)
    ref = tiny_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=hf_labels(batch.labels)).loss
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.retrieval_loss.item() == 0.0


def test_vectors_are_last_layer_hidden_states(char_tokenizer, tiny_lm):
    batch = OneGenCollator(char_tokenizer, max_length=128)(examples())
    model = OneGenModel(tiny_lm, LossConfig()).eval()
    with torch.no_grad():
        h = model.hidden_states(batch.input_ids, batch.attention_mask)
        full = tiny_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        q = gather_positions(h, batch.query_index)
        assert torch.allclose(q, gather_positions(full.hidden_states[-1], batch.query_index), atol=1e-6)
        rq = char_tokenizer.convert_tokens_to_ids(RQ)
        assert (batch.input_ids[batch.query_index[:, 0], batch.query_index[:, 1]] == rq).all()
        # documents padded apart give the same vectors as each document encoded alone
        d = gather_positions(model.hidden_states(batch.doc_input_ids, batch.doc_attention_mask), batch.doc_index)
        rd = char_tokenizer.convert_tokens_to_ids(RD)
        for j, (row, pos) in enumerate(batch.doc_index.tolist()):
            alone = batch.doc_input_ids[row, : pos + 1].unsqueeze(0)
            assert alone[0, -1] == rd
            ref = model.hidden_states(alone, torch.ones_like(alone))[0, -1]
            assert torch.allclose(d[j], ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["bpr", "info_nce"])
def test_retrieval_loss_reaches_special_token_embeddings(char_tokenizer, tiny_lm, kind):
    batch = OneGenCollator(char_tokenizer, max_length=128)(examples())
    model = OneGenModel(tiny_lm, LossConfig(kind=kind, lambda_g=0.0, negatives_per_positive=2))
    out = model(batch, generator=torch.Generator().manual_seed(0))
    assert out.n_pairs == 2 and torch.isfinite(out.loss)
    out.loss.backward()
    emb = tiny_lm.get_input_embeddings().weight.grad
    for tok in (RQ, RD):
        assert emb[char_tokenizer.convert_tokens_to_ids(tok)].abs().sum() > 0


def test_all_negatives_equal_the_loss_over_every_candidate(char_tokenizer, tiny_lm):
    """negatives_per_positive 0: each pair's softmax runs over all of its query's candidates; it equals
    the loss computed by hand from the vectors, and k = the full count drawn without replacement too."""
    batch = OneGenCollator(char_tokenizer, max_length=128)(examples())
    cfg = LossConfig(kind="info_nce", lambda_g=0.0, negatives_per_positive=0, positives_per_query=1, share_negatives=True)
    model = OneGenModel(tiny_lm, cfg).eval()
    with torch.no_grad():
        out = model(batch)
        q = gather_positions(model.hidden_states(batch.input_ids, batch.attention_mask), batch.query_index)
        d = gather_positions(model.hidden_states(batch.doc_input_ids, batch.doc_attention_mask), batch.doc_index)
        q, d = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(d, dim=-1)
        losses = []
        for i in range(batch.positive_mask.shape[0]):
            p = batch.positive_mask[i].nonzero().flatten()
            assert len(p) == 1  # each query of examples() has one positive unit
            scores = torch.cat([q[i] @ d[p].T, q[i] @ d[batch.negative_mask[i]].T]) / cfg.temperature
            losses.append(-torch.log_softmax(scores, dim=0)[0])
        assert out.retrieval_loss.item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)
        assert out.stats["negatives_drawn"] == int(batch.negative_mask.sum())


def test_counts_reach_the_output(char_tokenizer, tiny_lm):
    ex = examples()
    bad = TrainingExample("e3", "t", (Text("x", False), Retrieval("q"), Text("y", True)), (Query("q", ()),), ())
    out = OneGenModel(tiny_lm, LossConfig())(OneGenCollator(char_tokenizer, max_length=128)(ex + [bad]))
    assert out.stats["queries"] == 3
    assert out.stats["queries_without_positive"] == 1
    assert out.stats["queries_skipped_no_positive"] == 1
    assert out.stats["queries_used"] == 2
