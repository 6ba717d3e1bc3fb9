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
