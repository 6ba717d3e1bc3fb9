"""Segments → token ids, position roles, next-token labels and retrieval positions.

Each segment is tokenised on its own and the ids are concatenated, so every token's origin (which
segment, generated or not, [RQ]/[RD]) is known by construction. Labels are *position-aligned*:
`labels[i]` is the token that position i is trained to predict (`input_ids[i + 1]`) when position i
is GEN, else -100. They are already shifted: never pass them to a Hugging Face model's `labels=`
argument (which would shift them again); `onegen_core.method.model` computes the loss itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from onegen_core.method.control_tokens import ControlTokenEscape
from onegen_core.method.segments import Document, Retrieval, Role, Text, TrainingExample, escape_special_tokens
from onegen_core.method.tokens import SpecialTokenIds

IGNORE_INDEX = -100


@dataclass
class EncodedSequence:
    input_ids: list[int]
    roles: list[int]  # Role per position
    labels: list[int]  # position-aligned next-token targets, IGNORE_INDEX unless GEN
    queries: list[tuple[int, str]]  # (position, query id) per [RQ] kept after truncation
    docs: list[tuple[int, str]]  # (position, unit id) per [RD] kept after truncation
    truncated: bool = False
    dropped_queries: list[str] = field(default_factory=list)  # [RQ]s cut off by truncation
    dropped_docs: list[str] = field(default_factory=list)  # [RD]s cut off by truncation


class SegmentTokenizer:
    """Tokenises segment texts without special-token insertion, caching repeated strings.

    Segment texts are data (with OneGen's markup where the structure puts it): the backbone tokenizer's
    own control tokens spelled in them (SmolLM2's `<filename>`, Llama 2's `[INST]`) are escaped first
    (`ControlTokenEscape`), so a passage cannot close the chat turn or end the sequence; only the chat
    template's text keeps its control tokens. Text that spells none is tokenised exactly as before.

    The cache is keyed by text and lives with one tokenizer object only (never pickled to disk), so it
    cannot serve ids from another tokenizer: a bug of the upstream code.
    """

    def __init__(self, tokenizer, ids: SpecialTokenIds | None = None, add_bos: bool | None = None) -> None:
        self.tokenizer = tokenizer
        self.ids = ids or SpecialTokenIds.from_tokenizer(tokenizer)
        # Llama-style tokenizers expect a BOS at the start of every sequence; Qwen-style have none.
        if add_bos is None:
            probe = tokenizer("a", add_special_tokens=True)["input_ids"]
            add_bos = self.ids.bos is not None and len(probe) > 0 and probe[0] == self.ids.bos
        self.add_bos = add_bos
        from onegen_core.method.prompts import chat_wrapper

        self.chat = chat_wrapper(tokenizer)
        self.escape = ControlTokenEscape.for_tokenizer(tokenizer)
        self._cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        """The ids of data text, the backbone's control tokens in it escaped."""
        ids = self._cache.get(text)
        if ids is None:
            ids = self._raw(self.escape(text))
            if len(self._cache) < 200_000:
                self._cache[text] = ids
        return ids

    def _raw(self, text: str) -> list[int]:
        """The ids of template text (the chat wrapper), whose control tokens are meant."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix(self) -> list[int]:
        return [self.ids.bos] if self.add_bos else []

    def prompt(self, text: str) -> list[int]:
        """The ids of a sequence that starts with the prompt `text`: inside the chat template (user turn,
        then the assistant header) when the tokenizer has one, else after the BOS the model expects.
        The prompt is data text (a question, an article): a special token spelled in it is escaped
        (`escape_special_tokens`, then the backbone's control tokens), at inference exactly as in training."""
        text = escape_special_tokens(text)
        if self.chat is None:
            return self.prefix() + self(text)
        before, after = self.chat
        bos = self.prefix() if self.add_bos and not before.startswith(self.tokenizer.bos_token or "\x00") else []
        return bos + self._raw(before) + self(text) + self._raw(after)


def _finish(
    ids: list[int],
    emitted: list[bool],
    ret: list[str | None],
    is_query: list[bool],
    max_length: int | None,
) -> EncodedSequence:
    """Truncate, then derive roles and labels from the per-token flags."""
    truncated = max_length is not None and len(ids) > max_length
    dropped_q: list[str] = []
    dropped_d: list[str] = []
    if truncated:
        for key, q in zip(ret[max_length:], is_query[max_length:]):
            if key is not None:
                (dropped_q if q else dropped_d).append(key)
        ids, emitted, ret, is_query = ids[:max_length], emitted[:max_length], ret[:max_length], is_query[:max_length]
    n = len(ids)
    roles = [int(Role.CTX)] * n
    labels = [IGNORE_INDEX] * n
    queries: list[tuple[int, str]] = []
    docs: list[tuple[int, str]] = []
    for i in range(n):
        if ret[i] is not None:
            roles[i] = int(Role.RET)
            (queries if is_query[i] else docs).append((i, ret[i]))  # type: ignore[arg-type]
        elif i + 1 < n and emitted[i + 1]:
            roles[i] = int(Role.GEN)
            labels[i] = ids[i + 1]
    return EncodedSequence(ids, roles, labels, queries, docs, truncated, dropped_q, dropped_d)


def encode_example(example: TrainingExample, tok: SegmentTokenizer, max_length: int | None = None) -> EncodedSequence:
    """Encode the main sequence of `example`, ending with EOS so a trained model learns to stop. A leading
    given text is the prompt (`SegmentTokenizer.prompt`: inside the chat template when there is one),
    exactly as inference builds it."""
    segments = list(example.segments)
    if segments and isinstance(segments[0], Text) and not segments[0].generated:
        ids: list[int] = tok.prompt(segments.pop(0).text)
    else:
        ids = tok.prefix()
    emitted = [False] * len(ids)
    ret: list[str | None] = [None] * len(ids)
    is_query = [False] * len(ids)
    for seg in segments:
        if isinstance(seg, Retrieval):
            # [RQ] is emitted by the model (the previous position learns to predict it) and its own
            # position is RET.
            ids.append(tok.ids.rq)
            emitted.append(True)
            ret.append(seg.query_id)
            is_query.append(True)
        elif isinstance(seg, Text):
            piece = tok(seg.text)
            ids.extend(piece)
            emitted.extend([seg.generated] * len(piece))
            ret.extend([None] * len(piece))
            is_query.extend([False] * len(piece))
        else:  # pragma: no cover - guarded by the dataclass types
            raise TypeError(f"example {example.id!r}: unknown segment {seg!r}")
    ids.append(tok.ids.eos)
    emitted.append(True)
    ret.append(None)
    is_query.append(False)
    return _finish(ids, emitted, ret, is_query, max_length)


def document_separator(doc: Document, j: int) -> str:
    """Text placed before unit j: the title heads the document, sentences keep their own spacing."""
    if j == 0:
        return f"{doc.title}: " if doc.title else ""
    return "" if doc.units[j][:1].isspace() else " "


def encode_document(doc: Document, tok: SegmentTokenizer, max_length: int | None = None) -> EncodedSequence:
    """Encode `{document} [RD]` (or `s1 [RD] s2 [RD] …` for sentence granularity). No LM targets."""
    ids: list[int] = tok.prefix()
    ret: list[str | None] = [None] * len(ids)
    unit_ids = doc.unit_ids()
    for j, unit in enumerate(doc.units):
        piece = tok(document_separator(doc, j) + unit)
        ids.extend(piece)
        ret.extend([None] * len(piece))
        if doc.granularity == "sentence" or j == len(doc.units) - 1:
            ids.append(tok.ids.rd)
            ret.append(unit_ids[j] if doc.granularity == "sentence" else unit_ids[0])
    n = len(ids)
    return _finish(ids, [False] * n, ret, [False] * n, max_length)


def document_text(doc: Document) -> str:
    """The exact string a document row encodes, for indexes that store the text beside the vector."""
    return "".join(document_separator(doc, j) + u for j, u in enumerate(doc.units))
