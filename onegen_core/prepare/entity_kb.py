"""The embedded entity knowledge base, built from what is at hand when no Wikidata/Wikipedia entity
dump is: every entity id the ELEVANT labels name, titled by its KB name (the label's `name`, which
ELEVANT takes from Wikidata) and typed, and — where a shared passage corpus has a passage of the same
title — that passage as its description.

A title never comes from a held-out article's mention text: that would hand the gold surface form to
the mention-text ED baselines (BM25, MiniLM over titles). When an entity has no KB name, the mention
text of a *training* article may title it; otherwise its id does.

`page_entities` adds every other titled page at hand (the passage corpus, HotpotQA and 2Wiki
paragraphs) as an entry of its own, so that disambiguation at evaluation meets entities that no
benchmark names, as it would in a Wikipedia-sized KB. Their titles are Wikipedia page titles, never
mention texts."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from onegen_core.data.elevant import ElevantArticle
from onegen_core.data.kb import Entity


@dataclass
class KbCoverage:
    entities: int
    with_passage: int
    linkable_mentions: int
    mentions_with_passage: int
    title_sources: dict[str, int]
    held_out_entities: int = 0
    held_out_in_kb: int = 0
    held_out_with_name: int = 0
    held_out_with_passage: int = 0

    def to_dict(self) -> dict[str, float]:
        return {
            "entities": self.entities,
            "entities_with_passage": self.with_passage,
            "entity_passage_coverage": self.with_passage / self.entities if self.entities else 0.0,
            "linkable_mentions": self.linkable_mentions,
            "mention_passage_coverage": self.mentions_with_passage / self.linkable_mentions if self.linkable_mentions else 0.0,
            "title_sources": dict(self.title_sources),
            "held_out_gold_entities": self.held_out_entities,
            "held_out_gold_in_kb": self.held_out_in_kb,
            "held_out_gold_with_kb_name": self.held_out_with_name,
            "held_out_gold_with_passage": self.held_out_with_passage,
        }


def build_kb(articles: Iterable[ElevantArticle], passages: dict[str, str],
             train_benchmarks: Collection[str] = ()) -> tuple[list[Entity], KbCoverage]:
    """passages: title → text. `train_benchmarks`: benchmarks whose mention texts may title an entity
    that has no KB name. Entities are sorted by id so the KB file is deterministic."""
    articles = list(articles)
    names: dict[str, Counter] = defaultdict(Counter)  # KB names (labels' `name`)
    surface: dict[str, Counter] = defaultdict(Counter)  # mention texts of training articles
    types: dict[str, Counter] = defaultdict(Counter)
    mentions: Counter = Counter()
    held_out: set[str] = set()
    for art in articles:
        for lb in art.linkable_labels():
            if lb.name and lb.name != "Unknown":
                names[lb.entity_id][lb.name] += 1
            elif art.benchmark in train_benchmarks:
                surface[lb.entity_id][lb.mention(art.text)] += 1
            if lb.type:
                types[lb.entity_id][lb.type] += 1
            mentions[lb.entity_id] += 1
            if art.benchmark not in train_benchmarks:
                held_out.add(lb.entity_id)
    entities, sources = [], Counter()
    with_passage = 0
    title_of: dict[str, str] = {}
    for eid in sorted(mentions):
        if names[eid]:
            title, source = names[eid].most_common(1)[0][0], "kb_name"
        elif surface[eid]:
            title, source = surface[eid].most_common(1)[0][0], "training_mention"
        else:
            title, source = eid, "entity_id"
        sources[source] += 1
        title_of[eid] = title
        text = passages.get(title, "") if source != "entity_id" else ""
        with_passage += bool(text)
        etype = types[eid].most_common(1)[0][0] if types[eid] else None
        entities.append(Entity(eid, title, text, etype))
    covered = sum(n for eid, n in mentions.items() if passages.get(title_of[eid]))
    cov = KbCoverage(len(entities), with_passage, sum(mentions.values()), covered, dict(sorted(sources.items())),
                     held_out_entities=len(held_out), held_out_in_kb=sum(e in title_of for e in held_out),
                     held_out_with_name=sum(bool(names[e]) for e in held_out),
                     held_out_with_passage=sum(bool(passages.get(title_of[e])) and bool(names[e] or surface[e])
                                               for e in held_out))
    return entities, cov


PAGE_ID_PREFIX = "page:"  # a page entry's id: no gold label names it, so linking a mention to one is wrong


def page_entities(entities: Iterable[Entity], pages: dict[str, str]) -> tuple[list[Entity], dict[str, int]]:
    """Every titled page (title → text) that is not already an entity, as `Entity("page:<title>", title,
    text)`, in `pages` order, and the counts of what was added and skipped. A page whose title (case
    folded) is an entity's title is that entity's own passage (`build_kb` made it the description), not a
    second entity; a page without text has nothing to encode."""
    taken = {e.title.casefold() for e in entities}
    added: list[Entity] = []
    counts = Counter()
    for title, text in pages.items():
        counts["pages"] += 1
        key = title.strip().casefold()
        if not key or not text.strip():
            counts["skipped_empty"] += 1
        elif key in taken:
            counts["skipped_entity_title"] += 1
        else:
            taken.add(key)
            added.append(Entity(PAGE_ID_PREFIX + title, title, text.strip(), None))
    counts["added"] = len(added)
    return added, dict(sorted(counts.items()))
