"""The embedded entity knowledge base, built from what is at hand when no Wikidata/Wikipedia entity
dump is: every entity id the ELEVANT labels name, with its most frequent label name and its type, and
— where a shared passage corpus has a passage of the same title — that passage as its description."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from onegen_core.data.elevant import ElevantArticle
from onegen_core.data.kb import Entity


@dataclass
class KbCoverage:
    entities: int
    with_passage: int
    linkable_mentions: int
    mentions_with_passage: int

    def to_dict(self) -> dict[str, float]:
        return {
            "entities": self.entities,
            "entities_with_passage": self.with_passage,
            "entity_passage_coverage": self.with_passage / self.entities if self.entities else 0.0,
            "linkable_mentions": self.linkable_mentions,
            "mention_passage_coverage": self.mentions_with_passage / self.linkable_mentions if self.linkable_mentions else 0.0,
        }


def build_kb(articles: Iterable[ElevantArticle], passages: dict[str, str]) -> tuple[list[Entity], KbCoverage]:
    """passages: title → text. Entities are sorted by id so the KB file is deterministic."""
    names: dict[str, Counter] = defaultdict(Counter)
    types: dict[str, Counter] = defaultdict(Counter)
    mentions: Counter = Counter()
    for art in articles:
        for lb in art.linkable_labels():
            if lb.name and lb.name != "Unknown":
                names[lb.entity_id][lb.name] += 1
            else:
                names[lb.entity_id][lb.mention(art.text)] += 1
            if lb.type:
                types[lb.entity_id][lb.type] += 1
            mentions[lb.entity_id] += 1
    entities = []
    with_passage = 0
    for eid in sorted(names):
        title = names[eid].most_common(1)[0][0]
        text = passages.get(title, "")
        with_passage += bool(text)
        etype = types[eid].most_common(1)[0][0] if types[eid] else None
        entities.append(Entity(eid, title, text, etype))
    covered = sum(n for eid, n in mentions.items() if passages.get(names[eid].most_common(1)[0][0]))
    return entities, KbCoverage(len(entities), with_passage, sum(mentions.values()), covered)
