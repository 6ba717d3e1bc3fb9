"""The backbone tokenizer's control tokens, and the escape that keeps data text from spelling them.

A tokenizer turns each of its special tokens into its control id wherever the string appears, data text
included. OneGen's own tokens (`[RQ]`, `<MENTION>`, …) are escaped where data text enters
(`escape_special_tokens`), and every backbone's `<|name|>` tokens are escaped by the label stage
(`onegen_core.prepare.data_text`). What neither catches is a backbone's control tokens spelled otherwise:
SmolLM2's `<filename>`, `<gh_stars>`, `<issue_start>` (its code-pretraining markers), Llama 2's `<s>`,
`</s>`, `[INST]`. A tokenizer-specific set is known only when the tokenizer is, so this escape runs where
data text is tokenised: `SegmentTokenizer` (training, document encoding, evaluation and serving prompts)
and the inference engine's pasted passages, which therefore read alike.

The escape is the project's one escape (`segments.defuse`, as `escape_special_tokens` applies it): the token's first character becomes its
full-width look-alike (`<filename>` -> `＜filename>`, `[INST]` -> `［INST]`); a first character with no
full-width form is followed by a word joiner (U+2060). It is idempotent and matches no added token
(added tokens match raw text exactly). Text that spells no control token is returned unchanged, so its
token ids are exactly the raw tokenizer's.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from onegen_core.method.segments import defuse
from onegen_core.method.tokens import SPECIAL_TOKENS


def control_tokens(tokenizer) -> tuple[str, ...]:
    """Every string the tokenizer turns into a control token when it appears in text: its special tokens
    (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>` for ChatML-style ones) and every added token marked
    special (OneGen's among them), longest first. A user's text spelling one would become the token
    itself: `<|im_end|>` closes the chat turn the question sits in."""
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    found |= {a.content for a in added if getattr(a, "special", False)}
    found |= set(SPECIAL_TOKENS)
    return tuple(sorted((t for t in found if t), key=lambda t: (-len(t), t)))


def backbone_control_tokens(tokenizer) -> tuple[str, ...]:
    """`control_tokens` less OneGen's own: the set data text is escaped for when tokenised. OneGen's tokens
    are kept, because training text spells them on purpose (`<MENTION>` in an entity-linking target,
    `<paragraph>` around a pasted passage) after the data inside was escaped for them."""
    ours = set(SPECIAL_TOKENS)
    return tuple(t for t in control_tokens(tokenizer) if t not in ours)


class ControlTokenEscape:
    """`escape(text)`: `text` with every one of `tokens` defused (see the module docstring); the longest
    token wins where two start at one place (`</s>` before `<s>`)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.tokens = tuple(sorted({t for t in tokens if t}, key=lambda t: (-len(t), t)))
        self._pattern = re.compile("|".join(map(re.escape, self.tokens))) if self.tokens else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: defuse(m.group()), text)

    @classmethod
    def for_tokenizer(cls, tokenizer) -> ControlTokenEscape:
        return cls(backbone_control_tokens(tokenizer))
