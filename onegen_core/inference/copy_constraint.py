"""Constrained copy decoding for G→R generation: the model re-writes a given text and may only insert
mention markup, so every predicted span maps to exact character offsets of the input.

At each step the model may choose a token whose bytes continue the input text, or a mention bracket at
a character boundary; the choice among those is the model's (greedy). [RQ] is forced after
`</MENTION>` because training always puts it there.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from onegen_core.inference.token_bytes import token_bytes
from onegen_core.method.tokens import MENTION_CLOSE, MENTION_OPEN, SpecialTokenIds


class CopyConstraint:
    """A `TokenChooser` that makes row i re-write `texts[i]`, inserting only mention markup.

    State is rebuilt from the tokens the engine fed since the last call, so it holds however the
    engine chunks its feeds ([RQ] and <CON> arrive together)."""

    def __init__(self, tokenizer, texts: Sequence[str], prompt_lens: Sequence[int],
                 vocab_bytes: list[bytes | None] | None = None) -> None:
        self.ids = SpecialTokenIds.from_tokenizer(tokenizer)
        self.open, self.close = self.ids[MENTION_OPEN], self.ids[MENTION_CLOSE]
        self.vocab_bytes = vocab_bytes if vocab_bytes is not None else token_bytes(tokenizer)
        self.by_bytes: dict[bytes, list[int]] = {}
        for i, b in enumerate(self.vocab_bytes):
            if b:
                self.by_bytes.setdefault(b, []).append(i)
        self.max_len = max((len(b) for b in self.by_bytes), default=1)
        self.data = [t.encode("utf-8") for t in texts]
        self.char_of = [_byte_to_char(t) for t in texts]  # byte offset -> char offset, -1 inside a char
        self.pos = [0] * len(texts)  # bytes of the text copied so far
        self.inside = [False] * len(texts)
        self.start = [0] * len(texts)
        self.need_rq = [False] * len(texts)
        self.consumed = list(prompt_lens)
        self.spans: list[list[tuple[int, int]]] = [[] for _ in texts]  # char offsets in the window

    def _advance(self, row: int, seq: list[int]) -> None:
        for t in seq[self.consumed[row]:]:
            if t == self.open:
                self.inside[row], self.start[row] = True, self.pos[row]
            elif t == self.close:
                c = self.char_of[row]
                self.spans[row].append((c[self.start[row]], c[self.pos[row]]))
                self.inside[row], self.need_rq[row] = False, True
            elif t == self.ids.rq:
                self.need_rq[row] = False
            elif t in (self.ids.con, self.ids.eos):
                continue
            else:
                self.pos[row] += len(self.vocab_bytes[t] or b"")
        self.consumed[row] = len(seq)

    def allowed(self, row: int) -> list[int]:
        if self.need_rq[row]:
            return [self.ids.rq]
        p, data = self.pos[row], self.data[row]
        if p >= len(data):
            return [self.close] if self.inside[row] else [self.ids.eos]
        out: list[int] = []
        for n in range(1, min(self.max_len, len(data) - p) + 1):
            out += self.by_bytes.get(data[p:p + n], ())
        opening = self.inside[row] and p == self.start[row]
        if opening:  # a mention starts with its first word, as every training mention does
            out = [t for t in out if not self.vocab_bytes[t][:1].isspace()]
        if self.char_of[row][p] >= 0:  # brackets only between characters, never around whitespace
            if not self.inside[row] and not data[p:p + 1].isspace():
                out.append(self.open)
            elif self.inside[row] and not opening and not data[p - 1:p].isspace():
                out.append(self.close)
        return out

    def __call__(self, row: int, logits: torch.Tensor, seq: list[int]) -> int:
        self._advance(row, seq)
        allowed = self.allowed(row)
        if not allowed:
            raise ValueError(f"row {row}: no token of the vocabulary continues the text at byte {self.pos[row]}")
        if len(allowed) == 1:
            return allowed[0]
        idx = torch.tensor(allowed)
        return int(idx[int(logits[idx].argmax())])


def _byte_to_char(text: str) -> list[int]:
    out: list[int] = []
    for ci, ch in enumerate(text):
        n = len(ch.encode("utf-8"))
        out += [ci] + [-1] * (n - 1)
    out.append(len(text))
    return out
