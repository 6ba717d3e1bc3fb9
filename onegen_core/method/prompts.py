"""The text formats training and inference share: the multi-hop question prompt, the pasted passage, and
the chat template an instruct backbone's prompts are wrapped in.

Training (`onegen_core.prepare`) writes these strings into examples and the inference engine writes the
same strings at run time; one definition keeps the two from drifting apart.
"""
from __future__ import annotations

from onegen_core.method.tokens import PARAGRAPH_CLOSE, PARAGRAPH_OPEN

QUESTION_PREFIX = "The question is: "


def question_prompt(question: str) -> str:
    """The CTX text before the first [RQ] of a multi-hop example (implicit and explicit styles alike)."""
    return f"{QUESTION_PREFIX}{question}\n"


def paste_paragraph(title: str, text: str) -> str:
    """A retrieved passage as it is pasted after [RQ], in training and by the inference engine."""
    head = f"{title}: " if title else ""
    return f"{PARAGRAPH_OPEN}{head}{text.strip()}{PARAGRAPH_CLOSE}"


_SENTINEL = "\x00ONEGEN-PROMPT\x00"


def chat_wrapper(tokenizer) -> tuple[str, str] | None:
    """(text before, text after) the user's prompt in the tokenizer's chat template, with the generation
    prompt (the assistant turn's header) at the end; None when the tokenizer has no template.

    Whether a checkpoint uses a template is decided by its tokenizer alone (`backbone.chat_template:
    none` removes the template before the checkpoint is saved), so training, evaluation and serving of
    one checkpoint cannot disagree."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                         add_generation_prompt=True)
    if text.count(_SENTINEL) != 1:
        raise ValueError("the tokenizer's chat template does not place the user message exactly once")
    before, after = text.split(_SENTINEL)
    return before, after
