"""What an index holds, as `onegen index info` and `GET /v1/info` say it: where its documents came from
(sources), how many distinct titles, and a sample of them, so a user can tell which questions it can
answer before asking one.

Sources are recorded, in the table's schema metadata (`SOURCES_KEY`), by what writes the table:
- the encode stage sets them to the files it read (`encode.hotpotqa`, `encode.wiki2`, `encode.passages`
  for the passage table; `encode.kb`, `encode.kb_pages` for the entity table), each `{"source": PATH,
  "by": "encode stage"}`;
- `onegen index add` appends `{"source": PATH, "documents": n}` after each add.
A table written otherwise (before sources were recorded, or by other code) says `sources: null`
(unknown), never a guess.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

log = logging.getLogger("onegen.index")

SOURCES_KEY = "onegen.sources"
TITLE_SAMPLE = 8


def recorded_sources(index) -> list[dict] | None:
    """The sources `onegen index add` recorded on the table, oldest first; None when it recorded none."""
    raw = (index.table.schema.metadata or {}).get(SOURCES_KEY.encode())
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def record_source(index, source: str, documents: int) -> None:
    """Append one add's source to the table's metadata (a new table version, as any write); the caller
    holds the table's writer lock."""
    entries = recorded_sources(index) or []
    entries.append({"source": source, "documents": documents})
    index.table.to_lance().update_schema_metadata({SOURCES_KEY: json.dumps(entries)})


def set_sources(uri: str, table: str, entries: list[dict]) -> None:
    """Replace the table's recorded sources (the encode stage, which rewrites what it encodes). Metadata
    only: a failure is logged as a warning and the encoded table stands."""
    import lancedb

    try:
        lancedb.connect(uri).open_table(table).to_lance().update_schema_metadata({SOURCES_KEY: json.dumps(entries)})
    except Exception as e:  # noqa: BLE001 (the vectors are written; only the description is missing)
        log.warning("%s/%s: could not record the table's sources (%s: %s); `onegen index info` will say unknown",
                    uri, table, type(e).__name__, e)


def titles(index) -> dict[str, Any]:
    """Distinct titles of the table's documents and the most frequent ones (ties in title order)."""
    if not len(index):
        return {"distinct": 0, "sample": []}
    t = index.table.search().select(["doc_id", "title"]).limit(None).to_arrow()
    per_doc = dict(zip(t.column("doc_id").to_pylist(), t.column("title").to_pylist()))
    counts = Counter(title for title in per_doc.values() if title)
    sample = [title for title, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TITLE_SAMPLE]]
    return {"distinct": len(counts), "sample": sample}


def contents(index) -> dict[str, Any]:
    """`index.info()` plus sources and titles."""
    info = index.info()
    info["sources"] = recorded_sources(index)
    info["titles"] = titles(index)
    return info
