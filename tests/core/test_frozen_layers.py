"""Training only the top K layers on cached frozen-layer states: the same vectors as a full pass, only
the top layers change, each distinct sequence's lower layers run once."""
from __future__ import annotations

import pytest
import torch

from onegen_core.config import LossConfig, TinyBackboneConfig, TrainConfig
from onegen_core.method.backbone import build_tiny_backbone
from onegen_core.method.frozen_layers import LowerStateCache, run_layers, token_chunks
from onegen_core.method.model import OneGenModel


def lm_of(arch: str, vocab: int, layers: int = 4):
    cfg = TinyBackboneConfig(architecture=arch, hidden_size=32, intermediate_size=64, num_layers=layers,
                             num_heads=4, num_kv_heads=2, max_position_embeddings=256)
    return build_tiny_backbone(cfg, vocab, seed=0).eval()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_run_layers_from_any_split_equals_the_full_decoder(arch):
    lm = lm_of(arch, 100)
    ids = torch.randint(0, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0  # right padding, as the collator pads
    with torch.no_grad():
        full = lm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        emb = lm.get_decoder().embed_tokens(ids)
        for k in range(4):
            lower = run_layers(lm, emb, mask, 0, k) if k else emb
            out = run_layers(lm, lower, mask, k)
            real = mask.bool()
            assert torch.allclose(out[real], full[real], atol=1e-5)


def test_cached_states_equal_a_full_pass_and_each_sequence_runs_once(char_tokenizer):
    lm = lm_of("qwen2", len(char_tokenizer))
    model = OneGenModel(lm, LossConfig())
    ids = torch.randint(0, 200, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[2, 5:] = 0
    with torch.no_grad():
        full = model.hidden_states(ids, mask)
        model.train_top_layers(2)
        first = model.hidden_states(ids, mask)
        again = model.hidden_states(ids, mask)
    real = mask.bool()
    assert torch.allclose(first[real], full[real], atol=1e-5) and torch.equal(first, again)
    assert model.lower_cache.counts == {"misses": 3, "hits": 3} and len(model.lower_cache) == 3
    # a frozen cache (every rank of a data-parallel run filled it) refuses an unseen sequence
    model.lower_cache.frozen = True
    with pytest.raises(RuntimeError, match="same module calls"):
        model.hidden_states(ids[:, :4] + 1, mask[:, :4])
    with pytest.raises(ValueError, match="right-padded"):
        LowerStateCache(1).lookup(lm, ids[:1], torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1]]))


def test_only_the_top_layers_and_final_norm_train(char_tokenizer):
    from onegen_core.training.loop import train
    from tests.core.test_train_loop import lookup_examples

    from onegen_core.method.collator import OneGenCollator

    lm = lm_of("qwen2", len(char_tokenizer))
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    model = OneGenModel(lm, LossConfig(negatives_per_positive=3))
    hist = train(model, OneGenCollator(char_tokenizer, max_length=128), lookup_examples(),
                 TrainConfig(epochs=2, batch_size=4, lr=1e-2, trainable_layers=2))
    assert len(hist) == 4
    changed = {n for n, p in lm.named_parameters() if n in before and not torch.equal(p, before[n])}
    # the head was untied from the (frozen) input embeddings and trains on its own
    assert not torch.equal(lm.lm_head.weight, lm.model.embed_tokens.weight)
    assert changed and all(n.startswith(("model.layers.2.", "model.layers.3.", "model.norm")) for n in changed)
    assert not lm.config.tie_word_embeddings and lm.lm_head.weight is not lm.model.embed_tokens.weight
    assert any(n.startswith("model.layers.2.") for n in changed)
    # epoch 2 reads every sequence from the cache
    assert model.lower_cache.counts["hits"] >= model.lower_cache.counts["misses"]


def test_trainable_layers_out_of_range_is_an_error(char_tokenizer):
    model = OneGenModel(lm_of("qwen2", len(char_tokenizer)), LossConfig())
    with pytest.raises(ValueError, match="trainable_layers=9"):
        model.train_top_layers(9)


def test_token_chunks_cap_padded_tokens():
    assert token_chunks([100, 90, 10, 10, 10, 5], 200) == [(0, 2), (2, 6)]
    assert token_chunks([500, 3], 200) == [(0, 1), (1, 2)]  # a long row goes alone
    assert token_chunks([], 10) == []


def test_length_bucketing_keeps_a_seeded_permutation_with_similar_sizes_per_batch():
    from onegen_core.training.loop import data_order

    sizes = [i * 7 % 97 for i in range(64)]
    a = data_order(64, 3, 1, sizes, global_batch=4, pool_batches=4)
    assert sorted(a) == list(range(64)) and a == data_order(64, 3, 1, sizes, global_batch=4, pool_batches=4)
    assert a != data_order(64, 3, 2, sizes, global_batch=4, pool_batches=4)
    spread = lambda order: sum(max(sizes[i] for i in order[j:j + 4]) - min(sizes[i] for i in order[j:j + 4])  # noqa: E731
                               for j in range(0, 64, 4))
    assert spread(a) < spread(data_order(64, 3, 1))  # less padding than the plain order
