"""Data reconstruction: task records → `TrainingExample`s with [RQ]/[RD]/<CON> placed by structure.

One module per task format; `RECONSTRUCTORS` maps a task name to its builder so a new format (e.g.
Self-RAG) plugs in without touching the collator, the model or the loop.
"""
from onegen_core.reconstruct.entity_linking import Mention, reconstruct_entity_linking
from onegen_core.reconstruct.multihop import Hop, hops_from_supporting_facts, reconstruct_multihop
from onegen_core.reconstruct.selfrag import reconstruct_selfrag

RECONSTRUCTORS = {
    "multihop": reconstruct_multihop,
    "entity_linking": reconstruct_entity_linking,
    "selfrag": reconstruct_selfrag,
}

__all__ = [
    "RECONSTRUCTORS",
    "Hop",
    "Mention",
    "hops_from_supporting_facts",
    "reconstruct_entity_linking",
    "reconstruct_multihop",
    "reconstruct_selfrag",
]
