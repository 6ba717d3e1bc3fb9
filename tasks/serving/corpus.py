"""A user's own documents into the LanceDB index: `onegen index add PATH`.

PATH is a JSONL file (one `{"id", "title", "text"}` object per line) or a folder of `.txt`/`.md` files,
each cut into passages at blank lines. Every document becomes a `Document` exactly as the encode stage
builds one from a passage corpus: at `sentence` granularity one [RD] per sentence (`split_sentences`, later
sentences keep their leading space), at `document` granularity one [RD] per passage. The vectors come
from `tasks.adapters.index_encoding.encode_table`, the encode stage's own resumable encoder.

Ids decide what happens on a re-run: a document whose id is stored with the same content is skipped (an
interrupted run resumes; running twice adds nothing), one whose id is stored with other content is
refused unless `update` (then its old units are deleted and it is encoded again). A table encoded by
another checkpoint is never touched: its vectors live in another space.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onegen_core.data import DataError
from onegen_core.data.strict_json import read_jsonl as strict_jsonl
from onegen_core.inference.document_encoding import unit_records
from onegen_core.inference.index import IndexMismatchError, UnitRecord
from onegen_core.method.segments import Document
from onegen_core.method.tokens import SPECIAL_TOKENS
from onegen_core.prepare.sentences import split_sentences

if TYPE_CHECKING:
    from tasks.adapters.lance_index import AnnSettings

log = logging.getLogger("onegen.index")
TEXT_SUFFIXES = (".txt", ".md")
_BLANK_LINE = re.compile(r"\n\s*\n")


class CorpusError(ValueError):
    """A document the index cannot take; the message names the file, the record and the field."""


class DuplicateIdError(CorpusError):
    """Documents whose ids are already stored with other content (and `--update` was not given)."""


def check_plain_text(value: str, where: str, control: tuple[str, ...] = SPECIAL_TOKENS) -> None:
    """Refuse text that spells a special token: tokenised, `[RQ]` or `<paragraph>` in a passage (or the
    tokenizer's own `<|im_end|>`, with `control` from `control_tokens`) would become the control token
    itself and change what the model reads (the training format refuses them for the same reason)."""
    for t in control:
        if t in value:
            whose = "special token" if t in SPECIAL_TOKENS else "tokenizer's control token"
            raise CorpusError(f"{where}: contains the {whose} {t!r}; remove or reword it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a JSON escape such as "\ud800" decodes to half a character
        raise CorpusError(f"{where}: a lone surrogate ({value[e.start]!r} at character {e.start}) is no text; "
                          "fix the escape") from None


def _units(text: str, granularity: str) -> tuple[str, ...]:
    if granularity == "document":
        return (" ".join(text.split()),)
    sents = split_sentences(" ".join(text.split()))
    return tuple(s if i == 0 else " " + s for i, s in enumerate(sents))


def _check_id(doc_id: str, where: str) -> None:
    if "#" in doc_id:
        raise CorpusError(f"{where}: field 'id' {doc_id!r} contains '#': unit ids are '<id>#<sentence>'")


def _corpus_error(path: Path, e: DataError) -> CorpusError:
    """The strict reader's error as `onegen index add` has always worded it: `{path}:{line}: ...`."""
    where = f"{path}:{e.record.removeprefix('line ')}"
    cause = e.__context__  # the JSONDecodeError that `read_jsonl` replaced (it keeps it as the context)
    if isinstance(cause, json.JSONDecodeError):
        return CorpusError(f"{where}: not JSON ({cause.msg} at column {cause.colno})")
    return CorpusError(f"{where}: {e.message}")


def _document(rec: object, where: str, granularity: str) -> Document:
    """One line's document: `id` (non-empty string), `title` (string, may be empty), `text` (non-empty
    string), none spelling a special token. Other fields are ignored."""
    if not isinstance(rec, dict):
        raise CorpusError(f"{where}: expected an object with id, title, text; got {type(rec).__name__}")
    for key, required in (("id", True), ("title", False), ("text", True)):
        value = rec.get(key, None if required else "")
        if not isinstance(value, str) or (required and not value.strip()):
            got = "missing" if key not in rec else f"{type(value).__name__} {value!r}"[:80]
            raise CorpusError(f"{where}: field '{key}': expected a {'non-empty ' if required else ''}string, "
                              f"got {got}")
        check_plain_text(value, f"{where}: field '{key}'")
    doc_id = rec["id"].strip()
    _check_id(doc_id, where)
    return Document(id=doc_id, units=_units(rec["text"], granularity), title=rec.get("title", "").strip(),
                    granularity=granularity)


def read_jsonl(path: Path, granularity: str) -> list[Document]:
    """One document per line (`_document`), read by the strict JSONL reader: bytes that are not UTF-8 and
    a line that is not JSON are `CorpusError`s too. Errors name the line and the field."""
    docs: list[Document] = []
    seen: dict[str, int] = {}
    try:
        for n, rec in strict_jsonl(path):
            where = f"{path}:{n}"
            doc = _document(rec, where, granularity)
            if doc.id in seen:
                raise CorpusError(f"{where}: field 'id' {doc.id!r} repeats line {seen[doc.id]}")
            seen[doc.id] = n
            docs.append(doc)
    except DataError as e:  # only the reader raises one: a record's own errors are CorpusErrors
        raise _corpus_error(path, e) from None
    return docs


def _passages(text: str) -> tuple[str | None, list[str]]:
    """(first markdown `# ` heading, passages): blank lines separate passages; heading lines are not
    passages."""
    heading = None
    out = []
    for block in _BLANK_LINE.split(text):
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
        body = [ln for ln in lines if not ln.startswith("#")]
        for ln in lines:
            if heading is None and ln.startswith("# "):
                heading = ln[2:].strip()
        if body:
            out.append(" ".join(body))
    return heading, out


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, links resolved, is still under `root` (resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def read_folder(root: Path, granularity: str, refused: list[str] | None = None) -> list[Document]:
    """Every `.txt`/`.md` file under `root` (hidden ones skipped), in path order. A file's passages become
    documents `<relative path>:<n>` (n from 0) titled by its first `# ` heading, else its file name. A
    symbolic link whose target lies outside `root` is not read (a served index would hand its text to
    anyone who asks): its relative path goes to `refused`, which the caller reports."""
    docs: list[Document] = []
    candidates = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                        and not any(part.startswith(".") for part in p.relative_to(root).parts))
    files = [p for p in candidates if _inside(p, root)]
    if refused is not None:
        refused += [p.relative_to(root).as_posix() for p in candidates if not _inside(p, root)]
    if not files:
        outside = len(candidates) - len(files)
        raise CorpusError(f"{root}: no .txt or .md files" + (f" ({outside} link(s) leading out of it refused)"
                                                             if outside else ""))
    for f in files:
        rel = f.relative_to(root).as_posix()
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"{f}: not UTF-8 text (byte {e.start})") from None
        heading, passages = _passages(text)
        title = heading or f.stem
        check_plain_text(title, f"{f}: title")
        for n, passage in enumerate(passages):
            check_plain_text(passage, f"{f}: passage {n}")
            docs.append(Document(id=f"{rel}:{n}", units=_units(passage, granularity), title=title,
                                 granularity=granularity))
    return docs


def check_documents(docs: list[Document], control: tuple[str, ...], source: str | Path) -> None:
    """Refuse documents that spell one of the checkpoint's control tokens (`control_tokens`); read before
    the model is loaded, they were checked for OneGen's only. The error names the file, the document and
    the field."""
    for d in docs:
        for field_name, value in (("title", d.title), ("text", "".join(d.units))):
            check_plain_text(value, f"{source}: document {d.id!r}: field '{field_name}'", control)


def read_documents(path: str | Path, granularity: str, refused: list[str] | None = None) -> list[Document]:
    """The documents of a JSONL file or a folder (see the module docstring); a folder's links that lead
    out of it are not read, and listed in `refused`."""
    if granularity not in ("sentence", "document"):
        raise CorpusError(f"granularity must be 'sentence' or 'document', got {granularity!r}")
    p = Path(path)
    if p.is_dir():
        return read_folder(p, granularity, refused)
    if not p.is_file():
        raise CorpusError(f"{p}: no such file or folder")
    if p.suffix.lower() not in (".jsonl", ".json"):
        raise CorpusError(f"{p}: expected a .jsonl file (one {{id, title, text}} per line) or a folder of .txt/.md")
    return read_jsonl(p, granularity)


@dataclass
class Plan:
    """What `add_documents` will do with each input document, decided before anything is written."""

    new: list[str]
    unchanged: list[str]
    changed: list[str]


def _same(stored: list[UnitRecord], expected: list[UnitRecord]) -> bool:
    # a stored subset is the same document: units cut by truncation are never stored
    want = {r.id: r for r in expected}
    return all(r.id in want and r == want[r.id] for r in stored)


def plan(index, docs: list[Document]) -> Plan:
    """Compare the input with what `index` (a LanceIndex, or None for a new table) holds."""
    if index is None:
        return Plan([d.id for d in docs], [], [])
    stored = index.units_of([d.id for d in docs])
    new, unchanged, changed = [], [], []
    for d in docs:
        if d.id not in stored:
            new.append(d.id)
        elif _same(stored[d.id], unit_records(d)):
            unchanged.append(d.id)
        else:
            changed.append(d.id)
    return Plan(new, unchanged, changed)


def open_existing(uri: str, table: str):
    """The table as a LanceIndex, or None when it does not exist yet."""
    from tasks.adapters.lance_index import LanceIndex, table_names

    if table not in table_names(uri):
        return None
    return LanceIndex(uri, table)


def add_documents(model, collator, docs: list[Document], uri: str, table: str, checkpoint: str, ck: str,
                  batch_size: int, ann_min_rows: int, update: bool = False, ann: AnnSettings | None = None) -> dict:
    """Encode `docs` into `uri`/`table` with the checkpoint whose id is `ck` (its path `checkpoint` only
    names it in errors). Returns the counts `onegen index add` prints."""
    from tasks.adapters.table_lock import writer_lock

    t0 = time.perf_counter()
    with writer_lock(uri, table):  # plan and append as one writer: two at once would both append
        return _add_locked(model, collator, docs, uri, table, checkpoint, ck, batch_size, ann_min_rows, update, ann,
                           t0)


def _add_locked(model, collator, docs: list[Document], uri: str, table: str, checkpoint: str, ck: str,
                batch_size: int, ann_min_rows: int, update: bool, ann: AnnSettings | None, t0: float) -> dict:
    from tasks.adapters.index_encoding import encode_table

    existing = open_existing(uri, table)
    if existing is not None and existing.checkpoint_id != ck:
        raise IndexMismatchError(
            f"{uri}/{table} was encoded by checkpoint {existing.checkpoint_id} but {checkpoint} is checkpoint {ck}: "
            f"vectors of two checkpoints are not comparable; add to a new table (--table) or re-encode the "
            f"corpus with this checkpoint (dvc repro encode)")
    p = plan(existing, docs)
    if p.changed and not update:
        shown = ", ".join(repr(i) for i in p.changed[:5]) + (" …" if len(p.changed) > 5 else "")
        raise DuplicateIdError(f"{len(p.changed)} document id(s) are already in {uri}/{table} with other content: "
                               f"{shown}; rerun with --update to replace them")
    if p.changed:
        existing.delete_documents(p.changed)
        log.info("%s/%s: deleted the old units of %d updated documents", uri, table, len(p.changed))
    done = encode_table(model, collator, docs, uri, table, ck, batch_size, ann_min_rows, f"index add {table}", ann)
    return {"uri": uri, "table": table, "checkpoint_id": ck, "documents": len(docs),
            "documents_new": len(p.new), "documents_unchanged": len(p.unchanged), "documents_updated": len(p.changed),
            "documents_encoded_now": done.documents_encoded_now, "units_in_index": done.units_in_index,
            "units_truncated": done.units_truncated, "ann_index": done.ann_index,
            "seconds": round(time.perf_counter() - t0, 2)}
