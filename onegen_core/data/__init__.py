"""Dataset loaders for OneGen (standard library only; ``fsspec`` optional for remote paths)."""
from .errors import DataError
from .multihop import (
    MultiHopRecord,
    Paragraph,
    SupportingFact,
    join_sentences,
    load_2wiki,
    load_2wiki_with_report,
    load_hotpotqa,
    load_hotpotqa_with_report,
)

__all__ = [
    "DataError",
    "MultiHopRecord",
    "Paragraph",
    "SupportingFact",
    "join_sentences",
    "load_2wiki",
    "load_2wiki_with_report",
    "load_hotpotqa",
    "load_hotpotqa_with_report",
]
