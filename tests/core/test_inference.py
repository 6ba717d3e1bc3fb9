"""The one-pass invariant: the [RQ] vector is the hidden state a no-cache pass computes, no extra
forward pass per retrieval, and KV-cache continuation equals recomputation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onegen_core.config import LossConfig
from onegen_core.inference.document_encoding import encode_documents
from onegen_core.inference.generation import EngineStats, RetrievalPolicy, generate
from onegen_core.inference.index import ExactIndex, Hit, IndexMismatchError
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.segments import Document
from onegen_core.method.tokens import CON, RQ, SpecialTokenIds
from tests.conftest import char_ids

DOCS = [Document(f"d{i}", (text,), title=f"T{i}") for i, text in enumerate(["red apples", "long bananas", "sour lemons"])]


@pytest.fixture()
def setup(char_tokenizer, tiny_lm):
    tiny_lm.eval()
    model = OneGenModel(tiny_lm, LossConfig())
    col = OneGenCollator(char_tokenizer, max_length=256)
    recs, vecs = [], []
    for r, v in encode_documents(model, col, DOCS, batch_size=2):
        recs += r
        vecs.append(v)
    index = ExactIndex(recs, np.concatenate(vecs), checkpoint_id="ckpt-A")
    return char_tokenizer, tiny_lm, index


def scripted(tok, scripts: list[list[str]]):
    """A chooser that emits, per row, the given pieces (a special token or one character each)."""
    eos = SpecialTokenIds.from_tokenizer(tok).eos
    special = {RQ: tok.convert_tokens_to_ids(RQ), CON: tok.convert_tokens_to_ids(CON), "<eos>": eos}
    ids = [[special[p] if p in special else char_ids(tok, p)[0] for p in s] for s in scripts]
    seen: list[list[tuple[list[int], torch.Tensor]]] = [[] for _ in scripts]

    def choose(row, logits, seq):
        seen[row].append((list(seq), logits.clone()))
        k = len(seen[row]) - 1
        return ids[row][k] if k < len(ids[row]) else eos

    return choose, seen


@torch.no_grad()
def no_cache_hidden(lm, seq: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    out = lm(input_ids=torch.tensor([seq]), output_hidden_states=True)
    return out.hidden_states[-1][0], out.logits[0]  # (seq, dim), (seq, vocab)


@pytest.mark.parametrize("mode", ["rag", "link"])
def test_query_vector_is_the_no_cache_hidden_state(setup, mode):
    tok, lm, index = setup
    # two rows of different prompt lengths retrieving at different steps (padding holes in the cache)
    choose, _ = scripted(tok, [list("ab") + [RQ] + list("c"), list("xyz") + [RQ] + list("w") + [RQ] + list("v")])
    res = generate(lm, tok, ["hello there", "hi"], index, RetrievalPolicy(mode=mode), checkpoint_id="ckpt-A",
                   choose=choose)
    assert [len(r.retrievals) for r in res] == [1, 2]
    for r in res:
        full = r.prompt_ids + r.token_ids
        h, _ = no_cache_hidden(lm, full)
        for ev in r.retrievals:
            assert full[ev.position] == tok.convert_tokens_to_ids(RQ)
            ref = F.normalize(h[ev.position], dim=-1).numpy()
            np.testing.assert_allclose(r.query_vectors[ev.query_id], ref, atol=1e-5)
            assert len(ev.ids) == 1 and ev.ids[0] in {"d0", "d1", "d2"}
        if mode == "link":
            assert all(full[ev.position + 1] == tok.convert_tokens_to_ids(CON) for ev in r.retrievals)


def test_cache_continuation_after_injection_equals_recomputation(setup):
    tok, lm, index = setup
    choose, seen = scripted(tok, [list("ab") + [RQ] + list("cd"), list("q") + [RQ] + list("r")])
    res = generate(lm, tok, ["find it", "x"], index, RetrievalPolicy(mode="rag"), checkpoint_id="ckpt-A", choose=choose)
    checked = 0
    for row, calls in enumerate(seen):
        for seq, logits in calls:
            _, ref = no_cache_hidden(lm, seq)
            assert torch.allclose(logits, ref[-1], atol=1e-4), f"row {row} after {len(seq)} tokens"
            checked += 1
    # the calls right after a pasted passage are among those checked
    assert checked == sum(len(c) for c in seen) and any("</paragraph>" in tok.decode(r.token_ids) for r in res)


def test_finished_rows_leave_the_batch_and_the_rest_compute_as_alone(setup):
    """A row that finishes is dropped from the cache, with the columns no remaining row uses (its
    longer prompt, another row's pasted passage): later passes are narrower and shorter, and every
    logit a remaining row samples from still equals a no-cache recomputation of its sequence."""
    tok, lm, index = setup
    calls: list[tuple[int, torch.Tensor]] = []

    def pre(module, args, kwargs):
        calls.append((kwargs["input_ids"].shape[0], kwargs["attention_mask"].clone()))

    handle = lm.get_decoder().register_forward_pre_hook(pre, with_kwargs=True)
    try:
        choose, seen = scripted(tok, [["x"], list("ab") + [RQ] + list("c"), list("abcdefgh") + [RQ] + list("ijklmnop")])
        stats = EngineStats()
        res = generate(lm, tok, ["a much longer prompt than the other two", "hi", "yo"], index,
                       RetrievalPolicy(mode="rag"), "ckpt-A", choose=choose, stats=stats)
    finally:
        handle.remove()
    assert [r.finish_reason for r in res] == ["eos"] * 3
    assert tok.decode(res[2].token_ids).startswith("abcdefgh[RQ]<paragraph>")
    batch_sizes = [n for n, _ in calls]
    assert batch_sizes[0] == 3 and batch_sizes[-1] == 1
    assert batch_sizes == sorted(batch_sizes, reverse=True)  # a finished row never comes back
    # alone at the end, the last row's cache holds its own tokens only: no padding column is left
    last_mask = calls[-1][1]
    assert bool(last_mask.all()) and last_mask.shape[1] == len(seen[2][-1][0])
    assert stats.slots_processed >= stats.tokens_processed
    for row, row_calls in enumerate(seen):
        for seq, logits in row_calls:
            _, ref = no_cache_hidden(lm, seq)
            assert torch.allclose(logits, ref[-1], atol=1e-4), f"row {row} after {len(seq)} tokens"
    # the engine without compaction: the same tokens and retrievals, more slots computed
    choose2, _ = scripted(tok, [["x"], list("ab") + [RQ] + list("c"), list("abcdefgh") + [RQ] + list("ijklmnop")])
    stats2 = EngineStats()
    res2 = generate(lm, tok, ["a much longer prompt than the other two", "hi", "yo"], index,
                    RetrievalPolicy(mode="rag"), "ckpt-A", choose=choose2, stats=stats2, compact=False)
    assert [r.token_ids for r in res2] == [r.token_ids for r in res]
    assert [[e.ids for e in r.retrievals] for r in res2] == [[e.ids for e in r.retrievals] for r in res]
    assert stats2.tokens_processed == stats.tokens_processed and stats2.slots_processed > stats.slots_processed


def test_no_extra_forward_pass_per_retrieval(setup):
    tok, lm, index = setup
    calls = {"n": 0}
    handle = lm.get_decoder().register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        script = list("ab") + [RQ] + list("cd") + [RQ] + list("e")
        stats = EngineStats()
        choose, _ = scripted(tok, [script])
        res = generate(lm, tok, ["find it"], index, RetrievalPolicy(mode="rag"), "ckpt-A", choose=choose, stats=stats)
        onegen_calls = calls["n"]
        assert len(res[0].retrievals) == 2 and stats.searches == 2

        # The same token sequence generated with the passages pasted for free (no search, [RQ] kept as a
        # plain token): exactly as many decoder passes. Retrieval costs no forward pass of its own.
        pasted = {i: Hit(h, 0.0, h, index.records[index._row[h]].title, "", index.records[index._row[h]].doc_text)
                  for i, h in enumerate(ev.ids[0] for ev in res[0].retrievals)}
        calls["n"] = 0
        choose2, _ = scripted(tok, [script])
        res2 = generate(lm, tok, ["find it"], None, RetrievalPolicy(mode="rag"), choose=choose2,
                        paste_without_search=lambda row, n: pasted[n])
        assert res2[0].token_ids == res[0].token_ids
        assert calls["n"] == onegen_calls == stats.forward_passes
        # prefill + one pass per sampled token fed (EOS is not fed) + one per pasted passage
        sampled_fed = len(script)
        assert onegen_calls == 1 + sampled_fed + 2
    finally:
        handle.remove()


def test_link_mode_feeds_rq_and_con_in_one_pass(setup):
    tok, lm, index = setup
    stats = EngineStats()
    script = list("ab") + [RQ] + list("c")
    choose, _ = scripted(tok, [script])
    res = generate(lm, tok, ["p"], index, RetrievalPolicy(mode="link"), "ckpt-A", choose=choose, stats=stats)
    assert tok.decode(res[0].token_ids) == "ab[RQ]<CON>c"
    assert stats.forward_passes == 1 + len(script)  # [RQ]+<CON> share a pass


def test_retrieval_cap_and_length_and_eos(setup):
    tok, lm, index = setup
    choose, _ = scripted(tok, [[RQ, "a", RQ, "b"], list("abcdef"), ["a", "<eos>"]])
    res = generate(lm, tok, ["p", "q", "r"], index, RetrievalPolicy(mode="link", max_retrievals=1, max_new_tokens=4),
                   "ckpt-A", choose=choose)
    assert [r.finish_reason for r in res] == ["retrieval_cap", "length", "eos"]
    assert len(res[0].retrievals) == 1


def test_allowed_restricts_candidates(setup):
    tok, lm, index = setup
    choose, _ = scripted(tok, [[RQ], [RQ]])
    res = generate(lm, tok, ["p", "q"], index, RetrievalPolicy(mode="link", top_k=3), "ckpt-A", choose=choose,
                   allowed=[{"d1"}, None])
    assert res[0].retrievals[0].ids == ["d1"]
    assert sorted(res[1].retrievals[0].ids) == ["d0", "d1", "d2"]


def test_index_from_another_checkpoint_is_refused(setup):
    tok, lm, index = setup
    with pytest.raises(IndexMismatchError, match="ckpt-A"):
        generate(lm, tok, ["p"], index, RetrievalPolicy(), checkpoint_id="ckpt-B")


def test_sampling_is_seeded(setup):
    tok, lm, index = setup
    pol = RetrievalPolicy(mode="link", do_sample=True, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=3)
    a = generate(lm, tok, ["p", "qq"], index, pol, "ckpt-A")
    b = generate(lm, tok, ["p", "qq"], index, pol, "ckpt-A")
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


def test_chooser_chunks_are_fed_in_one_pass_and_equal_recomputation(setup):
    tok, lm, index = setup
    turn = char_ids(tok, "next question")
    calls = []
    script = iter([char_ids(tok, "a")[0], turn, tok.convert_tokens_to_ids(RQ), char_ids(tok, "b")[0]])

    def choose(row, logits, seq):
        calls.append((list(seq), logits.clone()))
        return next(script, SpecialTokenIds.from_tokenizer(tok).eos)

    stats = EngineStats()
    res = generate(lm, tok, ["p"], index, RetrievalPolicy(mode="link"), "ckpt-A", choose=choose, stats=stats)
    assert tok.decode(res[0].token_ids) == "anext question[RQ]<CON>b"
    assert stats.forward_passes == 1 + 4  # prefill, 'a', the turn as one chunk, [RQ]+<CON>, 'b'
    assert res[0].retrievals[0].position == 1 + 1 + len(turn)
    for seq, logits in calls:
        assert torch.allclose(logits, no_cache_hidden(lm, seq)[1][-1], atol=1e-4)


def test_a_pasted_passage_is_not_retrieved_again(setup):
    """R→G: a row's later [RQ] never fetches a document already pasted into it (OneGen and baselines
    alike); with exclusion off, the same query vector fetches it again."""
    tok, lm, index = setup
    same = np.ones(index.dim, np.float32) / np.sqrt(index.dim)  # one fixed query: the same top-1 each time
    for exclude, distinct in ((True, 3), (False, 1)):
        choose, _ = scripted(tok, [[RQ, RQ, RQ]])
        res = generate(lm, tok, ["p"], index, RetrievalPolicy(mode="rag", max_retrievals=3, exclude_pasted=exclude),
                       "ckpt-A", choose=choose, query_encoder=lambda row, seq: same)
        tops = [ev.ids[0] for ev in res[0].retrievals]
        assert len(tops) == 3 and len(set(tops)) == distinct
