"""Data text as every stage escapes it before a tokenizer reads it: OneGen's special tokens
(`escape_special_tokens`) and the chat-control tokens of the backbones' tokenizers.

A tokenizer turns its own special tokens into control ids wherever they are spelled, data text included:
`<|im_end|>` in a passage closes the chat turn the model reads it in, `<|endoftext|>` ends the sequence.
The control tokens of Qwen2 (the paper's backbones), SmolLM2, Llama 3 and Phi-3 share one spelling,
`<|name|>`; each is escaped the way OneGen's tokens are, its first character replaced by the full-width
look-alike (`<|im_end|>` -> `＜|im_end|>`): one character for one, so spans into the text stay valid,
readable, idempotent, and matching no added token. Control tokens spelled otherwise (SmolLM2's
`<filename>`, Llama 2's `<s>`, `[INST]`) are not escaped here, where no tokenizer is known (the `<s>` of
an HTML strike-through is ordinary text for most tokenizers): `SegmentTokenizer` escapes the backbone's
exact set when it tokenises data text (`onegen_core/method/control_tokens.py`), and the server refuses
it in requests.
"""
from __future__ import annotations

import re

from onegen_core.method.segments import defuse, escape_special_tokens

# `<|` + a name (no space, bar or angle bracket; at most 64 characters) + `|>`
CONTROL_TOKEN = re.compile(r"<\|[^\s|<>]{1,64}\|>")


def escape_control_tokens(text: str) -> str:
    """Every `<|name|>` of `text` with its '<' replaced by '＜'."""
    return CONTROL_TOKEN.sub(lambda m: defuse(m.group()), text)


def escape_data_text(text: str) -> str:
    """Data text escaped for training and inference alike: OneGen's tokens, then the control tokens."""
    return escape_control_tokens(escape_special_tokens(text))
