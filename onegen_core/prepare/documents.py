"""Records → the `Document`s an index encodes: every context paragraph of multi-hop records, passage
corpora split into sentences, KB entities. Ids are the ones training used, so a retrieved unit id can
be checked against the gold labels. Their text is escaped (`escape_special_tokens`): a literal [RD] in
a corpus never becomes one more [RD] vector, and what the index stores and pastes back is escaped too."""
from __future__ import annotations

from onegen_core.data.multihop import Paragraph
from onegen_core.method.segments import Document
from onegen_core.prepare.data_text import escape_data_text
from onegen_core.prepare.multihop import paragraph_document
from onegen_core.prepare.sentences import split_sentences


def documents_from_multihop(records, granularity: str) -> list[Document]:
    """Every context paragraph of the records, deduplicated by id (title + content hash), with the ids
    training used, so a retrieved unit id can be checked against the gold labels."""
    docs: dict[str, Document] = {}
    for r in records:
        for p in r.context:
            if p.sentences:
                d = paragraph_document(p, granularity)
                docs.setdefault(d.id, d)
    return list(docs.values())


def documents_from_passages(passages, granularity: str) -> list[Document]:
    """Passages `{title, text}` as documents; sentence granularity splits the text into sentences."""
    docs: dict[str, Document] = {}
    for p in passages:
        sents = split_sentences(p.text)
        para = Paragraph(p.title, tuple(s if i == 0 else " " + s for i, s in enumerate(sents)))
        d = paragraph_document(para, granularity)
        docs.setdefault(d.id, d)
    return list(docs.values())


def documents_from_kb(entities) -> list[Document]:
    """Entities as training's entity-linking documents: `{title}: {description} [RD]`, id = entity id,
    text escaped as training escapes it (`escape_special_tokens`)."""
    esc = escape_data_text  # OneGen's tokens and the tokenizers' control tokens
    return [Document(id=e.id, units=(esc(e.description),), title=esc(e.title), granularity="document")
            for e in entities]
