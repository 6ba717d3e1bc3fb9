"""The systems the evaluate stage compares, each a generator with a retriever.

Multi-hop QA (`multihop_systems`):
- onegen: the trained model; each [RQ] hidden state searches the LanceDB index (no query encoder);
- minilm: the pipeline — the same generator, a separate MiniLM retriever given the text the model has
  read at each [RQ] ("fix the generator", §4.3.2), cut to 256 word-pieces keeping the question and the
  most recent text; its units carry what OneGen's [RD] read (`evaluate.baseline_unit_text`);
- bm25: the same with BM25 (no length limit);
- sft: an SFT-only (λr = 0) checkpoint as generator with MiniLM retrieval ("fix the retriever").
Entity disambiguation (`ed_baseline`): BM25 or MiniLM over the same entity rows, queried with the gold
mention's text.

The `*_piece` functions run one system on one dataset, with a progress bar and the engine's counts, and
return what `ResultCache` keeps of it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onegen_core.config import BackboneConfig
from onegen_core.data.atomic_write import atomic_path
from onegen_core.data.elevant import ElevantArticle
from onegen_core.evaluation.linking import PredictedMention, Window, disambiguate_windows, link_windows
from onegen_core.evaluation.multihop import QueryEncoder, Setting, evaluate_multihop, query_parts_of
from onegen_core.inference.generation import EngineStats, RetrievalPolicy
from onegen_core.inference.index import ExactIndex, UnitRecord, VectorIndex
from onegen_core.method.backbone import load_pretrained
from tasks.adapters.baselines import BM25Index, MiniLMEncoder, TextSearchBridge, baseline_unit_parts, joined
from tasks.adapters.result_cache import mentions_to_json

# the evaluate stage's logger: these lines are part of its log
log = logging.getLogger("onegen.evaluate")
MULTIHOP_SYSTEMS = ("onegen", "minilm", "bm25", "sft")  # the order results are computed and reported in


@dataclass(frozen=True)
class System:
    """A generator and the retriever its [RQ] tokens query."""

    name: str
    model: Any  # the causal LM (eval mode)
    tokenizer: Any
    index: VectorIndex
    query_encoder: QueryEncoder | None  # None: the [RQ] hidden state is the query vector
    checkpoint_id: str | None  # the index must hold this checkpoint's vectors (None: a baseline's own)


def system_names(baselines: Sequence[str], sft_checkpoint: str) -> list[str]:
    """The multi-hop systems the settings ask for, in `MULTIHOP_SYSTEMS` order; onegen always."""
    return [n for n in MULTIHOP_SYSTEMS if n == "onegen" or n in baselines or (n == "sft" and sft_checkpoint)]


class QueryText:
    """A row's token ids up to its [RQ] → what a separate retriever is given (`query_parts_of`): the text
    for BM25, (head, tail) for a retriever that must truncate."""

    def __init__(self, tokenizer, style: str) -> None:
        self.tokenizer, self.style = tokenizer, style

    def parts(self, seq: list[int]) -> tuple[str, str]:
        return query_parts_of(self.tokenizer, seq, self.style)

    def __call__(self, seq: list[int]) -> str:
        return joined([self.parts(seq)])[0]


class MiniLMQueryEncoder:
    """The engine's query encoder for the pipeline baseline: MiniLM's vector of the row's query text, cut
    to its 256 word-pieces keeping the question and the most recent text (`MiniLMEncoder.fit`)."""

    def __init__(self, minilm: MiniLMEncoder, text: QueryText) -> None:
        self.minilm, self.text = minilm, text

    def __call__(self, row: int, seq: list[int]) -> np.ndarray:
        return self.minilm.encode_parts([self.text.parts(seq)])[0]  # (384,)


def minilm_index(minilm: MiniLMEncoder, records: Sequence[UnitRecord], cache_dir: Path,
                 form: str = "rd_context") -> ExactIndex:
    """MiniLM vectors of every unit (`baseline_unit_parts` in `form`), kept beside the partial results:
    encoding the corpus is the slowest part of the baselines and must not be paid again on resume."""
    f = cache_dir / f"minilm_units.{form}.npz"
    ids = np.array([r.id for r in records])
    if f.is_file():
        data = np.load(f, allow_pickle=False)
        if data["ids"].shape == ids.shape and (data["ids"] == ids).all():
            return ExactIndex(records, data["vectors"], "minilm")
    t0 = time.perf_counter()
    vectors = minilm.encode_parts(baseline_unit_parts(records, form))  # (n, 384)
    log.info("MiniLM encoded %d units in %.0f s", len(records), time.perf_counter() - t0)
    with atomic_path(f) as tmp:
        np.savez(tmp, ids=ids, vectors=vectors)
    return ExactIndex(records, vectors, "minilm")


def multihop_systems(onegen: System, unit_records: Sequence[UnitRecord], names: Sequence[str], query_style: str,
                     sft_checkpoint: str, dtype: str, cache_dir: Path, unit_text: str = "rd_context") -> dict[str, System]:
    """The systems `names` (from `system_names`) by name. The baselines share `onegen`'s generator and
    read what it writes before [RQ] (`query_style`); their units read `unit_text`
    (`baseline_unit_parts`); sft loads `sft_checkpoint` in `dtype`."""
    systems = {"onegen": onegen}
    lm, tok = onegen.model, onegen.tokenizer
    if "minilm" in names or "sft" in names:
        minilm = MiniLMEncoder()
        mini_index = minilm_index(minilm, unit_records, cache_dir, unit_text)
        if "minilm" in names:
            systems["minilm"] = System("minilm", lm, tok, mini_index,
                                       MiniLMQueryEncoder(minilm, QueryText(tok, query_style)), None)
        if "sft" in names:
            sft_lm, sft_tok, _ = load_pretrained(sft_checkpoint, BackboneConfig(name=sft_checkpoint, dtype=dtype))
            systems["sft"] = System("sft", sft_lm.eval(), sft_tok, mini_index,
                                    MiniLMQueryEncoder(minilm, QueryText(sft_tok, query_style)), None)
    if "bm25" in names:
        bridge = TextSearchBridge(BM25Index(unit_records, unit_text), QueryText(tok, query_style))
        systems["bm25"] = System("bm25", lm, tok, bridge, bridge.query_encoder, None)
    return systems


def ed_baseline(name: str, kb, articles: Sequence[ElevantArticle],
                gold: dict[str, set[tuple]]) -> dict[str, list[PredictedMention]]:
    """ED with a separate retriever (`name`: "bm25" or "minilm") over the same entity rows as `kb`,
    queried with each gold mention's text; predictions by article key, mentions in span order."""
    records = kb.records()
    texts_by = {a.key: a.text for a in articles}
    mentions = [(k, g) for k, gs in gold.items() for g in sorted(gs, key=lambda g: g[1])]
    queries = [texts_by[k][g[1]:g[2]] for k, g in mentions]
    # entity rows are whole documents (`Title: description`), what OneGen's [RD] of the entity read; MiniLM
    # keeps their start when cutting (the first sentences of a description define the entity)
    if name == "bm25":
        hits = BM25Index(records, "unit").search(queries, 1)
    else:
        enc = MiniLMEncoder()
        entity_index = ExactIndex(records, enc.encode(joined(baseline_unit_parts(records, "unit"))), "minilm")
        hits = entity_index.search(enc.encode(queries), 1)
    out: dict[str, list[PredictedMention]] = {}
    for (k, g), h in zip(mentions, hits):
        out.setdefault(k, []).append(PredictedMention(g[1], g[2], h[0].id if h else None, h[0].score if h else None))
    return out


# --------------------------------------------------------------------------- running a system


def progress(total: int, desc: str):
    """A progress bar over examples that disappears when closed (the log keeps the summary line)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", leave=False)


def multihop_piece(piece: str, systems: Callable[[], dict[str, System]], name: str, records: Sequence,
                   setting: Setting, policy: RetrievalPolicy, unit_doc: Callable[[str], str | None],
                   batch_size: int) -> list[dict]:
    """Prediction rows of system `name` on `records` (`systems()` builds the systems on first use, so a
    fully kept evaluation loads no baseline); `piece` ("multihop.<dataset>.<setting>.<system>") names it."""
    s = systems()[name]
    bar = progress(len(records), piece.removeprefix("multihop.").replace(".", " "))  # "hotpotqa open bm25"
    stats = EngineStats()
    rows, _ = evaluate_multihop(s.model, s.tokenizer, records, s.index, setting, policy, unit_doc, batch_size,
                                s.checkpoint_id, s.query_encoder, on_batch=bar.update, stats=stats)
    bar.close()
    log.info("%s: %d questions, %d forward passes, %d searches in %.0f s", piece, len(rows),
             stats.forward_passes, stats.searches, stats.seconds)
    return rows


def link_piece(lm, tok, windows: Sequence[Window], kb: VectorIndex, checkpoint_id: str, max_retrievals: int,
               batch_size: int, draft_tokens: int) -> dict[str, Any]:
    """MD and EL end to end over `windows`: the predictions, why each window stopped, and what it cost."""
    bar = progress(len(windows), "entity linking (MD+EL)")
    stats = EngineStats()
    preds, finish = link_windows(lm, tok, windows, kb, max_retrievals, batch_size, checkpoint_id,
                                 on_batch=bar.update, stats=stats, draft_tokens=draft_tokens)
    bar.close()
    return {"predictions": mentions_to_json(preds), "finish": dict(finish), "forward_passes": stats.forward_passes,
            "searches": stats.searches, "draft_tokens_fed": stats.draft_tokens_fed,
            "draft_tokens_kept": stats.draft_tokens_kept, "seconds": round(stats.seconds, 1)}


def ed_piece(lm, tok, windows: Sequence[Window], gold: dict[str, set[tuple]], kb: VectorIndex) -> dict[str, Any]:
    """ED with the gold mentions given: the predictions, the counts (mentions truncated) and the time."""
    bar = progress(len(windows), "entity disambiguation (gold mentions)")
    t_ed = time.perf_counter()
    preds, counts = disambiguate_windows(lm, tok, windows, gold, kb, on_batch=bar.update)
    bar.close()
    return {"predictions": mentions_to_json(preds), "counts": dict(counts),
            "seconds": round(time.perf_counter() - t_ed, 1)}


def ed_baseline_piece(name: str, kb, articles: Sequence[ElevantArticle], gold: dict[str, set[tuple]]) -> dict[str, Any]:
    return {"predictions": mentions_to_json(ed_baseline(name, kb, articles, gold))}
