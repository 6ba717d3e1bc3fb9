"""The special tokens of OneGen and how they are added to a tokenizer and a model.

One name per concept: code, params, logs and docs all use the constants below; no other module
spells a special-token string.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

RQ = "[RQ]"  # retrieval query: its last-layer hidden state is the query vector
RD = "[RD]"  # retrieval document: appended to a document (or sentence); its hidden state is the doc vector
CON = "<CON>"  # continue: a GEN position that carries generation on after a retrieval (G→R tasks)
LOC_OPEN, LOC_CLOSE = "<LOC>", "</LOC>"  # optional span of an explicit query
PARAGRAPH_OPEN, PARAGRAPH_CLOSE = "<paragraph>", "</paragraph>"  # a retrieved passage pasted back (R→G)
FINAL_OPEN, FINAL_CLOSE = "<FINAL-ANSWER>", "</FINAL-ANSWER>"
MENTION_OPEN, MENTION_CLOSE = "<MENTION>", "</MENTION>"

# Order matters: it fixes the ids given to a tokenizer that has none of them yet.
SPECIAL_TOKENS: tuple[str, ...] = (
    RQ,
    RD,
    CON,
    LOC_OPEN,
    LOC_CLOSE,
    PARAGRAPH_OPEN,
    PARAGRAPH_CLOSE,
    FINAL_OPEN,
    FINAL_CLOSE,
    MENTION_OPEN,
    MENTION_CLOSE,
)
RETRIEVAL_TOKENS: tuple[str, ...] = (RQ, RD)

# What each token means, in words: with `init="description"` a new token's rows start at the mean of its
# description's token rows, as the authors' code initialises them (zjunlp/OneGen, `resize_and_initialize`,
# descriptions from its workflow configs: "information of question" for the query token — spelled
# "infomation" there —, "information of document fragment", "continue to output", and the <paragraph>
# tags' sentences). The tokens the authors' configs do not have (mention, final-answer and LOC tags) get
# descriptions in the same style.
TOKEN_DESCRIPTIONS: dict[str, str] = {
    RQ: "information of question",
    RD: "information of document fragment",
    CON: "continue to output",
    LOC_OPEN: "a tag to indicate the start of the sub-question begins here",
    LOC_CLOSE: "a tag to indicate the end of the sub-question starts here",
    PARAGRAPH_OPEN: "a tag to indicate the start of the retrieved document begins here",
    PARAGRAPH_CLOSE: "a tag to indicate the end of the retrieved document starts here",
    FINAL_OPEN: "a tag to indicate the start of the final answer begins here",
    FINAL_CLOSE: "a tag to indicate the end of the final answer starts here",
    MENTION_OPEN: "a tag to indicate the start of the entity mention begins here",
    MENTION_CLOSE: "a tag to indicate the end of the entity mention starts here",
}
TOKEN_INITS: tuple[str, ...] = ("description", "pieces")


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the special tokens in one tokenizer, looked up once and passed around."""

    ids: dict[str, int]
    eos: int
    pad: int
    bos: int | None

    @property
    def rq(self) -> int:
        return self.ids[RQ]

    @property
    def rd(self) -> int:
        return self.ids[RD]

    @property
    def con(self) -> int:
        return self.ids[CON]

    def __getitem__(self, token: str) -> int:
        return self.ids[token]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialTokenIds":
        missing = [t for t in SPECIAL_TOKENS if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
        if missing:
            raise ValueError(f"tokenizer lacks OneGen special tokens {missing}: call add_special_tokens first")
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos_token: a model trained without one never stops")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(
            ids={t: int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS},
            eos=int(tokenizer.eos_token_id),
            pad=int(pad),
            bos=None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id),
        )


def add_special_tokens(tokenizer, model: torch.nn.Module | None = None, init: str = "pieces") -> SpecialTokenIds:
    """Add the OneGen tokens to `tokenizer` (and grow `model`'s embeddings to match).

    A new embedding row (input and, when untied, output) starts at the mean of the rows of the pieces
    of a text, split by the tokenizer before the token was added: its description (`init="description"`,
    `TOKEN_DESCRIPTIONS`, the authors' initialisation: `[RQ]` → "information of question") or its literal
    text (`"pieces"`: `[RQ]` → `[`, `RQ`, `]`). Where the input rows stay frozen
    (`train.trainable_layers`), the start is what the frozen layers read at a `[RQ]` for the whole run.
    A random row would give the new tokens a norm unlike any real token and destabilise the first
    steps; one shared mean row would make every OneGen token identical, which a recipe that keeps the
    embeddings frozen (`train.trainable_layers`) could never undo: `[RQ]` and `</FINAL-ANSWER>` would
    then have the same input vector and the same logit. The pieces' mean is distinct per token
    (every description differs), near real tokens and deterministic.
    Idempotent: tokens already present keep their ids and rows.
    """
    if init not in TOKEN_INITS:
        raise ValueError(f"token init must be one of {TOKEN_INITS}, got {init!r}")
    present = set(tokenizer.get_vocab())
    # tokenised before the tokens exist, so a description or a literal is split into ordinary pieces
    source = TOKEN_DESCRIPTIONS if init == "description" else {t: t for t in SPECIAL_TOKENS}
    pieces = {tok: list(tokenizer(source[tok], add_special_tokens=False)["input_ids"])
              for tok in SPECIAL_TOKENS if tok not in present}
    tokenizer.add_tokens(list(SPECIAL_TOKENS), special_tokens=True)
    if tokenizer.pad_token is None:
        # Padding positions are masked out of attention and loss, so re-using EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    ids = SpecialTokenIds.from_tokenizer(tokenizer)
    if model is not None:
        resize_embeddings(model, len(tokenizer), {ids[t]: p for t, p in pieces.items()})
    return ids


@torch.no_grad()
def resize_embeddings(model: torch.nn.Module, vocab_size: int, pieces: dict[int, list[int]] | None = None) -> None:
    """Grow (never shrink) the embedding matrices to `vocab_size`. New row i starts at the mean of the
    old rows `pieces[i]` (see `add_special_tokens`), or at the mean of all old rows without pieces."""
    old = model.get_input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return
    model.resize_token_embeddings(vocab_size, mean_resizing=False)

    def init(weight: torch.Tensor) -> None:  # (vocab, dim)
        mean = weight[:old].mean(dim=0)
        for i in range(old, vocab_size):
            src = [j for j in (pieces or {}).get(i, []) if j < old]
            weight[i] = weight[src].mean(dim=0) if src else mean

    inp = model.get_input_embeddings().weight
    init(inp)
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != inp.data_ptr():
        init(out.weight)
        if getattr(out, "bias", None) is not None:
            out.bias[old:] = out.bias[:old].mean()
