"""Entity linking in OneGen's G→R format.

The model reads the text and writes it again, marking each linkable mention:
    {text}\n                                               CTX (the input)
    … <MENTION>{span}</MENTION>[RQ]<CON> …<eos>            generated, except [RQ] (RET) and <CON>
`<CON>` follows every [RQ] because the [RQ] position's hidden state is the query vector, not a
next-token predictor; `<CON>` is the GEN position that carries the copy on. The engine appends it at
inference (nothing is pasted back in G→R). Documents are entity descriptions `{title}: {description}
[RD]`; negatives are hard candidates (e.g. same-name entities) given per mention.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from onegen_core.data.elevant import ElevantArticle
from onegen_core.method.segments import (
    Document,
    Query,
    Retrieval,
    Segment,
    Text,
    TrainingExample,
)
from onegen_core.method.tokens import CON, MENTION_CLOSE, MENTION_OPEN
from onegen_core.prepare.data_text import escape_data_text


@dataclass(frozen=True)
class Mention:
    start: int  # character offsets into the text, end exclusive
    end: int
    entity_id: str
    negatives: tuple[str, ...] = ()  # entity ids of hard negative candidates


def escape_article(article: ElevantArticle) -> ElevantArticle:
    """The article with its text, title and label names escaped (`escape_special_tokens`). The escape
    replaces one character by one, so every label's span still marks the same mention. The label stage
    escapes each article before reconstruction, which rejects a special token in data text."""
    esc = escape_data_text  # OneGen's tokens and the tokenizers' control tokens
    return replace(article, text=esc(article.text), title=esc(article.title),
                   labels=tuple(replace(lb, name=esc(lb.name)) for lb in article.labels))


def reconstruct_entity_linking(
    example_id: str,
    text: str,
    mentions: list[Mention],
    entities: dict[str, tuple[str, str]],
) -> TrainingExample:
    """`entities` maps entity id → (title, description) for every gold and negative id used; their
    documents are escaped (`escape_special_tokens`), `text` must already be."""
    ordered = sorted(mentions, key=lambda m: (m.start, m.end))
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.end:
            raise ValueError(f"example {example_id!r}: mentions {a.start}-{a.end} and {b.start}-{b.end} overlap")
    segments: list[Segment] = [Text(text + "\n", generated=False)]
    queries: list[Query] = []
    needed: dict[str, None] = {}
    cursor = 0
    for i, m in enumerate(ordered):
        if not (0 <= m.start < m.end <= len(text)):
            raise ValueError(f"example {example_id!r}: mention {i} span {m.start}-{m.end} outside the text")
        for eid in (m.entity_id, *m.negatives):
            if eid not in entities:
                raise ValueError(f"example {example_id!r}: mention {i} names entity {eid!r} absent from the KB")
            needed[eid] = None
        segments.append(Text(text[cursor:m.start] + MENTION_OPEN + text[m.start:m.end] + MENTION_CLOSE, generated=True))
        qid = f"m{i}"
        segments.append(Retrieval(qid))
        segments.append(Text(CON, generated=False))
        queries.append(Query(qid, (m.entity_id,), tuple(n for n in m.negatives if n != m.entity_id)))
        cursor = m.end
    segments.append(Text(text[cursor:], generated=True))
    esc = escape_data_text  # OneGen's tokens and the tokenizers' control tokens
    documents = tuple(
        Document(id=eid, units=(esc(entities[eid][1]),), title=esc(entities[eid][0]), granularity="document")
        for eid in needed
    )
    return TrainingExample(
        id=example_id, task="entity_linking", segments=tuple(segments), queries=tuple(queries), documents=documents
    )
