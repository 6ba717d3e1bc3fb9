"""The text formats training and inference share: the multi-hop question prompt and the pasted passage.

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
