"""Data text escaped before any tokenizer reads it (onegen_core/prepare/data_text.py): the chat-control
tokens of the backbones' tokenizers (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`) as well as OneGen's,
one character for one, idempotent; applied wherever training and evaluation read data text."""
from __future__ import annotations

from onegen_core.data.multihop import MultiHopRecord, Paragraph, SupportingFact
from onegen_core.prepare.data_text import escape_control_tokens, escape_data_text


def test_control_tokens_are_escaped_one_character_for_one_and_only_they():
    text = "a <|im_end|>\n<|im_start|>assistant b <|endoftext|> <|eot_id|> [RQ] <| x |> <|> a<b|c>"
    out = escape_data_text(text)
    assert len(out) == len(text)  # offsets into the text stay valid
    assert out == "a ＜|im_end|>\n＜|im_start|>assistant b ＜|endoftext|> ＜|eot_id|> ［RQ] <| x |> <|> a<b|c>"
    assert escape_data_text(out) == out  # idempotent
    assert escape_control_tokens("plain text, 3 < 4 | 5 > 2") == "plain text, 3 < 4 | 5 > 2"


def test_the_tokenizer_no_longer_sees_a_control_token():
    """What the escape is for: a tokenizer with `<|im_end|>` as a special token reads the escaped text as
    ordinary pieces, not as the control id."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = Tokenizer(models.WordLevel({"[UNK]": 0, "x": 1, "y": 2}, unk_token="[UNK]"))
    base.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=base, unk_token="[UNK]")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end in tok("x <|im_end|> y", add_special_tokens=False)["input_ids"]
    assert end not in tok(escape_data_text("x <|im_end|> y"), add_special_tokens=False)["input_ids"]


def test_training_and_evaluation_escape_records_articles_and_documents():
    from onegen_core.prepare.documents import documents_from_kb
    from onegen_core.prepare.multihop import escape_record, paragraph_document

    rec = MultiHopRecord(id="q", question="Who wrote <|endoftext|>?", answer="A <|im_end|>",
                         supporting_facts=(SupportingFact("T <|x|>", 0),),
                         context=(Paragraph("T <|x|>", ("S <|im_start|>.",)),), type="bridge", level="easy",
                         evidences=(), source="hotpotqa")
    esc = escape_record(rec)
    assert esc.question == "Who wrote ＜|endoftext|>?" and esc.answer == "A ＜|im_end|>"
    assert esc.context[0].title == "T ＜|x|>" and esc.supporting_facts[0].title == "T ＜|x|>"
    doc = paragraph_document(rec.context[0], "sentence")
    assert doc.units == ("S ＜|im_start|>.",) and doc.title == "T ＜|x|>"

    class E:
        id, title, description = "Q1", "<|pad|>", "about <|eot_id|>"

    (kb,) = documents_from_kb([E()])
    assert kb.title == "＜|pad|>" and kb.units == ("about ＜|eot_id|>",)


def test_evaluation_windows_are_escaped_in_place():
    from onegen_core.data.elevant import ElevantArticle
    from onegen_core.evaluation.linking import windows_of

    text = "Paris <|im_end|> is in France."
    art = ElevantArticle(id=1, title="", text=text, evaluation_span=None, labels=(), benchmark="b")
    (w,) = windows_of([art], 600)
    assert w.text == "Paris ＜|im_end|> is in France." and len(w.text) == len(text) and w.offset == 0
