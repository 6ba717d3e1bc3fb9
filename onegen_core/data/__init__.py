"""Dataset loaders for OneGen (standard library only; ``fsspec`` optional for remote paths)."""
from .elevant import NIL, NO_MAPPING, ElevantArticle, ElevantLabel, load_elevant, load_elevant_with_report
from .errors import DataError
from .kb import Entity, load_kb, load_kb_with_report, write_kb
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
from .passages import Passage, load_passages
from .selfrag import (
    SelfRagExample,
    SelfRagParagraph,
    SelfRagText,
    SelfRagToken,
    load_selfrag,
    load_selfrag_with_report,
    parse_selfrag_output,
)

__all__ = [
    "NIL",
    "NO_MAPPING",
    "DataError",
    "ElevantArticle",
    "ElevantLabel",
    "Entity",
    "MultiHopRecord",
    "Paragraph",
    "Passage",
    "SelfRagExample",
    "SelfRagParagraph",
    "SelfRagText",
    "SelfRagToken",
    "SupportingFact",
    "join_sentences",
    "load_2wiki",
    "load_2wiki_with_report",
    "load_elevant",
    "load_elevant_with_report",
    "load_hotpotqa",
    "load_hotpotqa_with_report",
    "load_kb",
    "load_kb_with_report",
    "load_passages",
    "load_selfrag",
    "load_selfrag_with_report",
    "parse_selfrag_output",
    "write_kb",
]
