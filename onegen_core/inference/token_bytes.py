"""The UTF-8 bytes each token id stands for, so decoding can be constrained to copy a given text.

Two vocabulary encodings cover the backbones we support:
- byte-level BPE (GPT-2, Qwen2, Llama-3, the embedded tiny tokenizer): every token string is written in
  the GPT-2 byte→unicode alphabet, inverted here;
- SentencePiece (Llama-2): `▁` is a space and byte-fallback pieces `<0xNN>` are single bytes.
Special and added tokens map to None: they are never part of copied text.
"""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's `bytes_to_unicode` table (printable bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _is_sentencepiece(pieces: list[str]) -> bool:
    return sum(p.startswith("▁") for p in pieces) > len(pieces) // 20 and any(p.startswith("<0x") for p in pieces)


def token_bytes(tokenizer) -> list[bytes | None]:
    """Bytes per token id (index = id); None for special/added tokens and unmappable pieces."""
    n = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(tokenizer.all_special_ids) | {i for i in tokenizer.added_tokens_decoder}
    out: list[bytes | None] = [None] * n
    if _is_sentencepiece([p for p in pieces if p]):
        for i, p in enumerate(pieces):
            if i in special or p is None:
                continue
            if len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
                out[i] = bytes([int(p[3:5], 16)])
            else:
                out[i] = p.replace("▁", " ").encode("utf-8")
        return out
    dec = _byte_decoder()
    for i, p in enumerate(pieces):
        if i in special or p is None:
            continue
        try:
            out[i] = bytes(dec[ch] for ch in p)
        except KeyError:  # a piece outside the byte alphabet (an added word token): not copyable
            out[i] = None
    return out
