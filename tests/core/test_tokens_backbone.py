from __future__ import annotations

import json

import pytest
import torch

from onegen_core.method.backbone import META_FILE, load_pretrained, save_checkpoint
from onegen_core.method.tokens import SPECIAL_TOKENS, SpecialTokenIds, add_special_tokens, resize_embeddings


def test_special_token_strings():
    assert SPECIAL_TOKENS[:3] == ("[RQ]", "[RD]", "<CON>")
    assert {"<LOC>", "</LOC>", "<paragraph>", "</paragraph>", "<FINAL-ANSWER>", "</FINAL-ANSWER>",
            "<MENTION>", "</MENTION>"} <= set(SPECIAL_TOKENS)
    assert len(set(SPECIAL_TOKENS)) == len(SPECIAL_TOKENS)


def test_special_tokens_are_atomic_and_idempotent(char_tokenizer):
    before = len(char_tokenizer)
    ids = add_special_tokens(char_tokenizer)  # already added by the fixture: no change
    assert len(char_tokenizer) == before
    for t in SPECIAL_TOKENS:
        assert char_tokenizer(t, add_special_tokens=False)["input_ids"] == [ids[t]]
    assert char_tokenizer.decode([ids.rq, ids.rd]) == "[RQ][RD]"


def test_new_rows_start_at_the_mean(tiny_lm):
    emb = tiny_lm.get_input_embeddings().weight
    old = emb.shape[0]
    mean = emb.detach().mean(0)
    resize_embeddings(tiny_lm, old + 3)
    new = tiny_lm.get_input_embeddings().weight
    assert new.shape[0] == old + 3
    assert torch.allclose(new[old:], mean.expand(3, -1), atol=1e-6)
    resize_embeddings(tiny_lm, old)  # never shrinks
    assert tiny_lm.get_input_embeddings().weight.shape[0] == old + 3


def test_new_rows_start_at_the_mean_of_their_pieces(tiny_lm):
    emb = tiny_lm.get_input_embeddings().weight.detach().clone()
    old = emb.shape[0]
    resize_embeddings(tiny_lm, old + 2, {old: [3, 5, 7], old + 1: [9]})
    new = tiny_lm.get_input_embeddings().weight
    assert torch.allclose(new[old], emb[[3, 5, 7]].mean(0)) and torch.allclose(new[old + 1], emb[9])


def test_missing_special_tokens_are_reported():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")),
                                   unk_token="<unk>", eos_token="a")
    with pytest.raises(ValueError, match="lacks OneGen special tokens"):
        SpecialTokenIds.from_tokenizer(bare)


def test_checkpoint_round_trip(tmp_path, char_tokenizer, tiny_lm):
    save_checkpoint(tiny_lm, char_tokenizer, tmp_path, {"backbone": "tiny", "tokenizer": "bpe-trained"})
    assert json.loads((tmp_path / META_FILE).read_text())["special_tokens"]["[RQ]"] == char_tokenizer.convert_tokens_to_ids("[RQ]")
    assert (tmp_path / "model.safetensors").is_file()
    model, tok, ids = load_pretrained(str(tmp_path))
    text = "hello [RQ] world"
    assert tok(text)["input_ids"] == char_tokenizer(text)["input_ids"]
    x = torch.tensor([char_tokenizer(text)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(x).logits, tiny_lm.eval()(x).logits, atol=1e-5)
    assert len(tok) == len(char_tokenizer) and ids.rq == char_tokenizer.convert_tokens_to_ids("[RQ]")


def _bare_char_tokenizer():
    """A byte-level tokenizer without the OneGen tokens (every ASCII character one token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["abc"], trainers.BpeTrainer(vocab_size=258, min_frequency=1, special_tokens=["<eos>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                         show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.mark.parametrize("init, text", [("description", "information of question"), ("pieces", "[RQ]")])
def test_new_token_rows_start_at_their_description_or_their_pieces(init, text):
    """The authors' code starts a new token at the mean of its description's token rows (input and
    output); "pieces" uses the token's literal text instead."""
    from onegen_core.config import TinyBackboneConfig
    from onegen_core.method.backbone import build_tiny_backbone
    from onegen_core.method.frozen_layers import untie_output_head
    from onegen_core.method.tokens import TOKEN_DESCRIPTIONS

    tok = _bare_char_tokenizer()
    lm = build_tiny_backbone(TinyBackboneConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                                                num_kv_heads=2, max_position_embeddings=64), len(tok), seed=0)
    untie_output_head(lm)
    with torch.no_grad():
        lm.get_output_embeddings().weight.mul_(2.0)  # distinct from the input rows
    src = tok(text, add_special_tokens=False)["input_ids"]
    emb_in = lm.get_input_embeddings().weight.detach().clone()
    emb_out = lm.get_output_embeddings().weight.detach().clone()
    ids = add_special_tokens(tok, lm, init)
    assert torch.allclose(lm.get_input_embeddings().weight[ids.rq], emb_in[src].mean(0))
    assert torch.allclose(lm.get_output_embeddings().weight[ids.rq], emb_out[src].mean(0))
    rows = torch.stack([lm.get_input_embeddings().weight[ids[t]] for t in SPECIAL_TOKENS])
    assert torch.cdist(rows, rows).add(torch.eye(len(rows)) * 1e9).min() > 1e-4  # no two tokens start equal
    assert set(TOKEN_DESCRIPTIONS) == set(SPECIAL_TOKENS)


def test_unknown_token_init_is_refused(char_tokenizer):
    with pytest.raises(ValueError, match="token init"):
        add_special_tokens(char_tokenizer, None, "random")
