"""DVC stage `evaluate`: the trained checkpoint and its LanceDB index, end to end, with baselines.

Multi-hop QA (held-out HotpotQA and 2WikiMultihopQA questions), in the distractor and/or open setting:
- onegen: the model generates; each [RQ] hidden state searches the index (one pass, no re-encoding);
- minilm: the pipeline — the same generator, a separate MiniLM retriever given the question (plus any
  sub-question written since the last passage) at each [RQ] ("fix the generator", §4.3.2);
- bm25: the same with BM25;
- sft: an SFT-only (λr = 0) checkpoint as generator with MiniLM retrieval ("fix the retriever"), when
  `evaluate.sft_checkpoint` names one.
Entity linking on the held-out ELEVANT benchmarks: MD and EL end to end (constrained G→R generation),
ED with gold mentions, against the encoded entity table; ED baselines BM25 and MiniLM (mention text).

Writes metrics/evaluate.json, per-example predictions (JSONL; ELEVANT linked-articles JSONL), a markdown
report with plots, and logs it all to the MLflow run that trained the checkpoint. Each (dataset,
setting, system) result is kept under runs/evaluate/<checkpoint id>/ as soon as it is computed, so an
interrupted evaluation resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onegen_core.config import BackboneConfig, Params, flatten
from onegen_core.data import load_2wiki, load_elevant, load_hotpotqa
from onegen_core.data.multihop import MultiHopRecord
from onegen_core.evaluation.linking import (
    PredictedMention,
    disambiguate_windows,
    gold_by_article,
    link_windows,
    score_elevant,
    score_linking,
    windows_of,
)
from onegen_core.evaluation.multihop import aggregate, evaluate_multihop, gold_of, query_text_of
from onegen_core.inference.generation import EngineStats, RetrievalPolicy
from onegen_core.inference.index import check_checkpoint
from onegen_core.method.backbone import checkpoint_id, load_pretrained
from onegen_core.method.precision import resolve_inference_dtype
from tasks.stage_common import stage_params, write_json, write_jsonl

log = logging.getLogger("onegen.evaluate")
MULTIHOP_METRICS = ("em", "f1", "recall_at_1_subquery", "recall_at_1_question", "unit_recall_at_1", "misses")


class ResultCache:
    """Finished pieces of one evaluation, keyed by checkpoint and settings: re-running skips them."""

    def __init__(self, root: Path, key: dict[str, Any]) -> None:
        from onegen_core.method.backbone import check_path_id

        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        # the id becomes a directory name: `../x` would write outside `root`
        self.dir = root / f"{check_path_id(key['checkpoint_id'], 'checkpoint_id')}-{digest}"
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, name: str) -> Any | None:
        f = self.dir / f"{name}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def put(self, name: str, value: Any) -> Any:
        write_json(self.dir / f"{name}.json", value)
        return value


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", leave=False)


def _load_records(path: str, limit: int, dataset: str) -> list[MultiHopRecord]:
    # prepared files are each dataset's official JSON form; 2Wiki's has `evidences`, no `level`
    records = (load_2wiki if dataset == "2wiki" else load_hotpotqa)(path)
    return records[:limit] if limit else records


def multihop_systems(p: Params, lm, tok, units, unit_records, cache_dir: Path) -> dict[str, dict[str, Any]]:
    """name -> {model, tokenizer, index, query_encoder, checkpoint_id}; baselines load lazily."""
    cfg = p.evaluate
    style = p.reconstruct.query_style  # what the model writes before [RQ], hence what a baseline reads
    systems: dict[str, dict[str, Any]] = {"onegen": {"model": lm, "tok": tok, "index": units, "encoder": None,
                                                      "checkpoint_id": units.checkpoint_id}}
    minilm = None
    if "minilm" in cfg.baselines or cfg.sft_checkpoint:
        from tasks.baselines import MiniLMEncoder

        minilm = MiniLMEncoder()
        mini_index = minilm_index(minilm, unit_records, cache_dir)

        def mini_encoder(tokenizer) -> Callable[[int, list[int]], np.ndarray]:
            return lambda row, seq: minilm.encode([query_text_of(tokenizer, seq, style)])[0]

        if "minilm" in cfg.baselines:
            systems["minilm"] = {"model": lm, "tok": tok, "index": mini_index, "encoder": mini_encoder(tok),
                                 "checkpoint_id": None}
        if cfg.sft_checkpoint:
            sft_lm, sft_tok, _ = load_pretrained(cfg.sft_checkpoint, BackboneConfig(name=cfg.sft_checkpoint, dtype=resolve_inference_dtype(p.backbone.inference_dtype)))
            systems["sft"] = {"model": sft_lm.eval(), "tok": sft_tok, "index": mini_index,
                              "encoder": mini_encoder(sft_tok), "checkpoint_id": None}
    if "bm25" in cfg.baselines:
        from tasks.baselines import BM25Index, TextSearchBridge

        bridge = TextSearchBridge(BM25Index(unit_records), lambda seq: query_text_of(tok, seq, style))
        systems["bm25"] = {"model": lm, "tok": tok, "index": bridge, "encoder": bridge.query_encoder,
                           "checkpoint_id": None}
    return systems


def minilm_index(minilm, records, cache_dir: Path):
    """MiniLM vectors of every unit (`title: text`), kept beside the partial results: encoding the
    corpus is the slowest part of the baselines and must not be paid again on resume."""
    from onegen_core.inference.index import ExactIndex

    f = cache_dir / "minilm_units.npz"
    ids = np.array([r.id for r in records])
    if f.is_file():
        data = np.load(f, allow_pickle=False)
        if data["ids"].shape == ids.shape and (data["ids"] == ids).all():
            return ExactIndex(records, data["vectors"], "minilm")
    t0 = time.perf_counter()
    vectors = minilm.encode([f"{r.title}: {r.text}" if r.title else r.text for r in records])  # (n, 384)
    log.info("MiniLM encoded %d units in %.0f s", len(records), time.perf_counter() - t0)
    tmp = f.with_suffix(".tmp.npz")
    np.savez(tmp, ids=ids, vectors=vectors)
    os.replace(tmp, f)
    return ExactIndex(records, vectors, "minilm")


def run_multihop(p: Params, lm, tok, units, cache: ResultCache, out: Path) -> dict:
    cfg = p.evaluate
    unit_records = units.records()
    unit_doc = {r.id: r.doc_id for r in unit_records}.get
    datasets = {name: path for name, path in (("hotpotqa", cfg.hotpotqa), ("2wiki", cfg.wiki2)) if path}
    systems = None
    results: dict[str, dict] = {}
    policy = RetrievalPolicy(mode="rag", max_retrievals=cfg.max_retrievals, max_new_tokens=cfg.max_new_tokens)
    for ds, path in datasets.items():
        records = _load_records(path, cfg.max_questions, ds)
        missing = _missing_candidates(records, {r.doc_id for r in unit_records})
        if missing:
            log.warning("%s: %d questions have paragraphs absent from the index (%s); their retrievals may "
                        "find nothing and count as misses", ds, len(missing), missing[:3])
        for setting in cfg.settings:
            for name in ["onegen", "minilm", "bm25", "sft"]:
                if name != "onegen" and name not in cfg.baselines and not (name == "sft" and cfg.sft_checkpoint):
                    continue
                piece = f"multihop.{ds}.{setting}.{name}"
                rows = cache.get(piece)
                if rows is None:
                    systems = systems or multihop_systems(p, lm, tok, units, unit_records, cache.dir)
                    s = systems[name]
                    bar = _bar(len(records), f"{ds} {setting} {name}")
                    stats = EngineStats()
                    rows, _ = evaluate_multihop(s["model"], s["tok"], records, s["index"], setting, policy,
                                                unit_doc, cfg.batch_size, s["checkpoint_id"], s["encoder"],
                                                on_batch=bar.update, stats=stats)
                    bar.close()
                    log.info("%s: %d questions, %d forward passes, %d searches in %.0f s", piece, len(rows),
                             stats.forward_passes, stats.searches, stats.seconds)
                    cache.put(piece, rows)
                agg = aggregate(rows)
                results.setdefault(ds, {}).setdefault(setting, {})[name] = agg
                write_jsonl(out / "predictions" / f"{ds}.{setting}.{name}.jsonl", rows)
                log.info("%s: EM %.3f F1 %.3f R@1 sub-query %.3f question %.3f; misses %s", piece, agg["em"],
                         agg["f1"], agg["recall_at_1_subquery"], agg["recall_at_1_question"], agg["misses_by_reason"])
    return results


def _missing_candidates(records: list[MultiHopRecord], index_docs: set[str]) -> list[str]:
    return [r.id for r in records if not gold_of(r).candidates <= index_docs]


def _el_articles(p: Params) -> list:
    cfg = p.evaluate
    split_file = Path(p.prepare.out_dir) / "el_split.json"
    trained = set(json.loads(split_file.read_text())["benchmarks"]["train"]) if split_file.is_file() else set()
    articles = []
    for path in cfg.elevant:
        arts = load_elevant(path)
        if not arts:
            continue
        bench = arts[0].benchmark
        if cfg.el_benchmarks and bench not in cfg.el_benchmarks:
            continue
        if bench in trained:
            raise ValueError(f"evaluate.elevant: {path} ({bench}) is a training benchmark in {split_file}; "
                             "evaluate only on held-out benchmarks (prepare.el_eval_benchmarks)")
        articles += arts[: cfg.max_articles] if cfg.max_articles else arts
    return articles


def _mentions_to_json(preds: dict[str, list[PredictedMention]]) -> dict[str, list[dict]]:
    return {k: [m.__dict__ for m in v] for k, v in preds.items()}


def _mentions_from_json(data: dict[str, list[dict]]) -> dict[str, list[PredictedMention]]:
    return {k: [PredictedMention(**m) for m in v] for k, v in data.items()}


def run_entity_linking(p: Params, lm, tok, ck: str, cache: ResultCache, out: Path) -> dict:
    from tasks.lance_index import LanceIndex

    cfg = p.evaluate
    articles = _el_articles(p)
    if not articles:
        return {}
    kb = LanceIndex(cfg.index_uri, cfg.kb_table)
    check_checkpoint(kb, ck)
    windows = windows_of(articles, cfg.el_max_chars)
    gold = gold_by_article(articles)
    result: dict[str, Any] = {"articles": len(articles), "windows": len(windows),
                              "gold_mentions": sum(len(g) for g in gold.values())}

    linked = cache.get("el.link")
    if linked is None:
        bar = _bar(len(windows), "entity linking (MD+EL)")
        stats = EngineStats()
        preds, finish = link_windows(lm, tok, windows, kb, cfg.el_max_retrievals, cfg.el_batch_size, ck,
                                     on_batch=bar.update, stats=stats, draft_tokens=cfg.el_draft_tokens)
        bar.close()
        linked = cache.put("el.link", {"predictions": _mentions_to_json(preds), "finish": dict(finish),
                                       "forward_passes": stats.forward_passes, "searches": stats.searches,
                                       "draft_tokens_fed": stats.draft_tokens_fed,
                                       "draft_tokens_kept": stats.draft_tokens_kept,
                                       "seconds": round(stats.seconds, 1)})
    link_preds = _mentions_from_json(linked["predictions"])
    scores = score_linking(articles, link_preds)
    result["windows_by_finish_reason"] = linked["finish"]
    # what the linking pass cost, and how much of the speculative copy's guessing was kept
    result["linking_pass"] = {k: linked.get(k) for k in ("forward_passes", "searches", "draft_tokens_fed",
                                                          "draft_tokens_kept", "seconds")}

    ed = cache.get("el.ed.onegen")
    if ed is None:
        bar = _bar(len(windows), "entity disambiguation (gold mentions)")
        t_ed = time.perf_counter()
        preds, counts = disambiguate_windows(lm, tok, windows, gold, kb, on_batch=bar.update)
        bar.close()
        ed = cache.put("el.ed.onegen", {"predictions": _mentions_to_json(preds), "counts": dict(counts),
                                        "seconds": round(time.perf_counter() - t_ed, 1)})
    ed_scores = score_linking(articles, _mentions_from_json(ed["predictions"]))
    result["ed_mentions_truncated"] = ed["counts"].get("mentions_truncated", 0)

    systems: dict[str, dict] = {"onegen": {b: {"md": s["md"], "el": s["el"], "ed": ed_scores[b]["el"]}
                                           for b, s in scores.items()}}
    for name in cfg.baselines:
        piece = f"el.ed.{name}"
        data = cache.get(piece)
        if data is None:
            data = cache.put(piece, {"predictions": _mentions_to_json(_ed_baseline(name, kb, articles, gold))})
        sc = score_linking(articles, _mentions_from_json(data["predictions"]))
        systems[name] = {b: {"ed": s["el"]} for b, s in sc.items()}
    result["systems"] = systems
    # the same predictions by ELEVANT's own rules (word-boundary widening, unlinked = <NIL>, coreference
    # inferred from the text), as ELEVANT's evaluate.py would score the exported files
    ed_preds = _mentions_from_json(ed["predictions"])
    elevant = {"link": score_elevant(articles, _as_exported(link_preds)),
               "ed": score_elevant(articles, _as_exported(ed_preds))}
    result["elevant_rules"] = {b: {"ner": s["ner"], "el": s["linking"], "ed": elevant["ed"][b]["linking"]}
                               for b, s in elevant["link"].items()}
    _write_elevant(p, articles, link_preds, out / "elevant", "onegen",
                   "OneGen end to end: constrained G->R generation marks mentions, each [RQ] links", linked.get("seconds"))
    _write_elevant(p, articles, ed_preds, out / "elevant", "onegen-ed",
                   "OneGen entity disambiguation: gold mentions given, one teacher-forced pass", ed.get("seconds"))
    return result


def _ed_baseline(name: str, kb, articles, gold) -> dict[str, list[PredictedMention]]:
    """ED with a separate retriever over the same entity rows, queried with the mention's text."""
    from tasks.baselines import BM25Index, MiniLMEncoder

    records = kb.records()
    texts_by = {f"{a.benchmark}/{a.id}": a.text for a in articles}
    mentions = [(k, g) for k, gs in gold.items() for g in sorted(gs, key=lambda g: g[1])]
    queries = [texts_by[k][g[1]:g[2]] for k, g in mentions]
    if name == "bm25":
        hits = BM25Index(records).search(queries, 1)
    else:
        enc = MiniLMEncoder()
        hits = enc.index(records).search(enc.encode(queries), 1)
    out: dict[str, list[PredictedMention]] = {}
    for (k, g), h in zip(mentions, hits):
        out.setdefault(k, []).append(PredictedMention(g[1], g[2], h[0].id if h else None, h[0].score if h else None))
    return out


def _as_exported(preds: dict[str, list[PredictedMention]]) -> dict[str, list[PredictedMention]]:
    """Predictions as the ELEVANT export writes them: a marked mention that linked nothing is `<NIL>`."""
    return {k: [PredictedMention(m.start, m.end, m.entity_id or "<NIL>", m.score, m.candidates) for m in v]
            for k, v in preds.items()}


def _write_elevant(p: Params, articles, preds: dict[str, list[PredictedMention]], out: Path, experiment: str,
                   description: str, seconds: float | None) -> None:
    """ELEVANT linked-articles JSONL, one file per benchmark, as ELEVANT's `link_benchmark.py` writes it:
    the article's keys in ELEVANT's order, `entity_mentions` sorted by span (each with `id` — `<NIL>`
    when the mention linked nothing — `recognized_by`, `linked_by`, sorted `candidates`), `json.dumps`
    defaults (ASCII escapes), and a `.metadata.json` beside each file."""
    import datetime

    from onegen_core.data import load_elevant

    raw: dict[str, dict] = {}
    for path in p.evaluate.elevant:
        # the loader reads BOM, gzip and bz2 as it reads them for evaluation; the raw JSON lines follow
        bench = _bench_of(path)
        ids = {str(a.id) for a in load_elevant(path)}
        from onegen_core.data.open_source import open_text

        with open_text(path) as fh:
            for line in fh:
                if line.strip():
                    art = json.loads(line)
                    if str(art.get("id")) in ids:
                        raw[f"{bench}/{art['id']}"] = art
    by_bench: dict[str, list[str]] = {}
    for a in articles:
        key = f"{a.benchmark}/{a.id}"
        src = raw.get(key)
        if src is None:
            raise ValueError(f"ELEVANT export: article {key!r} is in none of evaluate.elevant's files as read again")
        art: dict[str, Any] = {"id": src["id"], "title": src.get("title", ""), "text": src["text"]}
        for k in ("hyperlinks", "title_synonyms"):
            if src.get(k):
                art[k] = src[k]
        if src.get("url") is not None:
            art["url"] = src["url"]
        mentions = [
            {"span": [m.start, m.end], "id": m.entity_id or "<NIL>", "recognized_by": experiment,
             "linked_by": experiment, "candidates": sorted(set(m.candidates) | {m.entity_id or "<NIL>"})}
            for m in sorted(preds.get(key, []), key=lambda m: (m.start, m.end))
        ]
        if mentions:
            art["entity_mentions"] = mentions
        art["evaluation_span"] = src.get("evaluation_span") or [0, len(src["text"])]
        art["labels"] = sorted(src.get("labels", []), key=lambda lb: lb.get("id", 0))
        if src.get("sections"):
            art["sections"] = src["sections"]
        by_bench.setdefault(a.benchmark, []).append(json.dumps(art) + "\n")
    stamp = datetime.datetime.now().strftime("%Y/%m/%d %H:%M")
    for bench, lines in by_bench.items():
        path = out / f"{experiment}.{bench}.linked_articles.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, path)
        meta = {"experiment_name": experiment, "experiment_description": description, "linker_name": "onegen",
                "timestamp": stamp, "linking_time": seconds}
        path.with_name(f"{experiment}.{bench}.metadata.json").write_text(json.dumps(meta))


def _bench_of(path: str) -> str:
    from onegen_core.data.elevant import benchmark_name

    return benchmark_name(path)


def flat_metrics(result: dict) -> dict[str, float]:
    """MLflow metric names: eval/<dataset>/<setting>/<system>/<metric>, eval/el[/<benchmark>]/<system>/<task>_<p|r|f1>."""
    out: dict[str, float] = {}
    for ds, settings in result.get("multihop", {}).items():
        for setting, systems in settings.items():
            for name, agg in systems.items():
                for m in MULTIHOP_METRICS:
                    out[f"eval/{ds}/{setting}/{name}/{m}"] = float(agg[m])
    for bucket, tasks_ in (result.get("entity_linking", {}).get("elevant_rules") or {}).items():
        prefix = "eval/el_elevant" if bucket == "all" else f"eval/el_elevant/{bucket}"
        for t, s in tasks_.items():
            for k, short in (("precision", "p"), ("recall", "r"), ("f1", "f1")):
                out[f"{prefix}/onegen/{t}_{short}"] = float(s[k])
    for name, buckets in result.get("entity_linking", {}).get("systems", {}).items():
        for bucket, tasks_ in buckets.items():
            prefix = "eval/el" if bucket == "all" else f"eval/el/{bucket}"
            for t, s in tasks_.items():
                for k, short in (("precision", "p"), ("recall", "r"), ("f1", "f1")):
                    out[f"{prefix}/{name}/{t}_{short}"] = float(s[k])
    return out


def run(p: Params) -> dict:
    cfg = p.evaluate
    from tasks.lance_index import LanceIndex

    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    dtype = resolve_inference_dtype(p.backbone.inference_dtype)
    lm, tok, _ = load_pretrained(cfg.checkpoint, BackboneConfig(name=cfg.checkpoint, dtype=dtype))
    lm.eval()
    ck = checkpoint_id(cfg.checkpoint)
    units = LanceIndex(cfg.index_uri, cfg.units_table)
    check_checkpoint(units, ck)
    key = {"checkpoint_id": ck, "dtype": dtype, "query_style": p.reconstruct.query_style,
           **{k: v for k, v in flatten(cfg).items() if k not in ("out_dir", "metrics_path", "log_mlflow")}}
    cache = ResultCache(Path("runs") / "evaluate", key)
    log.info("evaluating checkpoint %s (%s); partial results in %s", cfg.checkpoint, ck, cache.dir)
    result: dict[str, Any] = {"checkpoint": cfg.checkpoint, "checkpoint_id": ck}
    result["multihop"] = run_multihop(p, lm, tok, units, cache, out)
    result["entity_linking"] = run_entity_linking(p, lm, tok, ck, cache, out)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(cfg.metrics_path, result)
    from tasks.eval_report import write_report

    report = write_report(result, out)
    log.info("wrote %s and %s in %.0f s", cfg.metrics_path, report, result["seconds"])
    if cfg.log_mlflow:
        result["mlflow"] = log_to_mlflow(p, result, out)
        write_json(cfg.metrics_path, result)  # now with where the MLflow run is
    return result


def log_to_mlflow(p: Params, result: dict, out: Path) -> dict[str, str]:
    """A nested `evaluate` run under the run that trained the checkpoint (found in its train_run.json),
    holding every metric and the report; the headline metrics also go on the training run itself so
    the MLflow UI compares training runs by them. Without a training run, a standalone run."""
    from mlflow.exceptions import MlflowException

    from tasks import tracking

    meta_file = Path(p.evaluate.checkpoint) / "train_run.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    # train_run.json records the store relative to the project (tracking.portable_uri): resolve it here
    uri = tracking.tracking_uri(meta.get("mlflow_tracking_uri") or p.mlflow.tracking_uri)
    client = tracking.client_for(uri)
    parent = meta.get("mlflow_run_id")
    try:
        exp_id = client.get_run(parent).info.experiment_id if parent else None
    except MlflowException:  # the run was deleted or the store moved: evaluate standalone
        log.warning("training run %s not found in %s; logging a standalone evaluate run", parent, uri)
        parent, exp_id = None, None
    if exp_id is None:
        exp_id = tracking.ensure_experiment(client, p.mlflow.experiment,
                                            tracking.artifact_location(p.mlflow.artifact_location))
    tags = {"onegen.stage": "evaluate", "onegen.checkpoint_id": result["checkpoint_id"]}
    if parent:
        tags["mlflow.parentRunId"] = parent
    rid = tracking.new_run(client, exp_id, "evaluate", tags,
                           {f"evaluate.{k}": str(v)[:500] for k, v in flatten(p.evaluate).items()})
    metrics = flat_metrics(result)
    tracking.log_metrics(client, rid, metrics)
    client.log_artifacts(rid, str(out), "evaluate")
    client.log_artifact(rid, p.evaluate.metrics_path)
    tracking.finish_run(client, rid)
    if parent:
        tracking.log_metrics(client, parent, metrics)
    log.info("MLflow: evaluate run %s (parent %s) at %s", rid, parent or "-", uri)
    return {"run_id": rid, "parent_run_id": parent or "", "tracking_uri": tracking.portable_uri(uri)}


def main(argv: list[str] | None = None) -> None:
    r = run(stage_params(__doc__, argv))
    from tasks.eval_report import headline

    print(headline(r))


if __name__ == "__main__":
    main()
