"""Constrained copy decoding for G→R generation: the model re-writes a given text and may only insert
mention markup, so every predicted span maps to exact character offsets of the input.

At each step the model chooses (greedily) between the tokens that continue the input text *as training
tokenised it* and a mention bracket at a word boundary. [RQ] is forced after `</MENTION>` because
training always puts it there.

Why the tokenisation matters: a byte-level vocabulary can spell the rest of a text in many ways
("Japan" as one token or as "J", "a", "pan"), but training only ever showed the tokenizer's own
encoding of each text piece between markup. Letting the model pick any spelling takes it off that
distribution (measured on the SmolLM2 default: 52 predicted mentions per 600-character window against
about 5 gold ones, and most windows ended at the retrieval cap). So the text tokens allowed at byte `p`
are the first token of the tokenizer's encoding of the rest of the text, and of the text up to each word
boundary in reach where a bracket could follow (as when training encoded `"in " + <MENTION>`).
Brackets go at word boundaries only (never inside a word, never around whitespace), which is where
gold spans lie and what ELEVANT widens predictions to anyway. Where the rest of the text starts inside a
UTF-8 character, every byte-continuing token is allowed, as before.
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
        self.tokenizer = tokenizer
        self.texts = list(texts)
        self._first: dict[tuple[int, int, int], int | None] = {}  # (row, char from, char to) -> first token
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
        c = self.char_of[row][p]
        if c >= 0:
            as_trained = [t for t in self._trained_firsts(row, c) if t in set(out)]
            out = as_trained or out  # a tokenizer that does not round-trip keeps every spelling
            if self._bracket_here(row, c, self.inside[row]) and not opening:
                out.append(self.close if self.inside[row] else self.open)
        return out

    def _bracket_here(self, row: int, c: int, inside: bool) -> bool:
        """Whether `<MENTION>` (outside a mention) or `</MENTION>` (inside) may stand before char `c`:
        at a word boundary, never next to whitespace on the mention's side."""
        text = self.texts[row]
        if 0 < c < len(text) and text[c - 1].isalnum() and text[c].isalnum():
            return False  # inside a word
        if inside:
            return c > 0 and not text[c - 1].isspace()
        return c < len(text) and not text[c].isspace()

    def _trained_firsts(self, row: int, c: int) -> list[int]:
        """The first token of the tokenizer's encoding of the rest of the text from char `c`, and of the
        text from `c` up to each boundary within a token's reach where a bracket may stand next."""
        text, inside = self.texts[row], self.inside[row]
        ends = [len(text)] + [q for q in range(c + 1, min(len(text), c + self.max_len) + 1)
                              if self._bracket_here(row, q, inside)]
        firsts = []
        for q in ends:
            key = (row, c, q)
            if key not in self._first:
                ids = self.tokenizer(text[c:q], add_special_tokens=False)["input_ids"]
                self._first[key] = ids[0] if ids else None
            t = self._first[key]
            if t is not None and t not in firsts:
                firsts.append(t)
        return firsts

    def draft(self, row: int, seq: list[int], n: int) -> list[int]:
        """Up to `n` tokens the row is likely to copy next, after `seq` (which ends with the token just
        chosen): the tokenizer's own encoding of the text that follows. A guess for the engine to check
        in one pass (`RetrievalPolicy.draft_tokens`); the greedy choice at each drafted position decides
        what is kept, so a wrong guess costs compute, never a different output."""
        self._advance(row, seq)
        p, data = self.pos[row], self.data[row]
        if n <= 0 or self.need_rq[row] or p >= len(data) or (self.inside[row] and p == self.start[row]):
            return []
        c = self.char_of[row][p]
        if c < 0:  # inside a UTF-8 character: no text encoding starts here
            return []
        text = self.texts[row]
        # 8 characters a guess: enough for n tokens of ordinary text; text of longer tokens gets fewer guesses,
        # which costs passes, never output
        stop = min(len(text), c + 8 * (n + 1))
        ids = self.tokenizer(text[c:stop], add_special_tokens=False)["input_ids"]
        if stop < len(text):
            ids = ids[:-1]  # the last piece may be cut by the slice's end
        return list(ids[:n])

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
