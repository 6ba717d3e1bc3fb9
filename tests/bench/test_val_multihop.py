"""bench/val_multihop.py gives its baselines what evaluate gives them: MiniLM keeps a long query's question."""
from __future__ import annotations

from bench.val_multihop import query_parts
from onegen_core.evaluation.retrieval import HopQuery

EMPTY = frozenset()


def test_an_implicit_querys_question_is_its_head_and_an_explicit_one_has_none():
    implicit = HopQuery("e", 1, "Who directed it? Inception: a film by Nolan.", EMPTY, EMPTY, EMPTY)
    assert query_parts(implicit, "Who directed it?") == ("Who directed it?", " Inception: a film by Nolan.")
    explicit = HopQuery("e", 1, "Where was Nolan born?", EMPTY, EMPTY, EMPTY)
    assert query_parts(explicit, "Who directed it?") == ("", "Where was Nolan born?")
    assert query_parts(explicit, "") == ("", "Where was Nolan born?")
