"""DVC stage `evaluate`: the trained checkpoint and its LanceDB index, end to end, with baselines.

Multi-hop QA (held-out HotpotQA and 2WikiMultihopQA questions), in the distractor and/or open setting:
- onegen: the model generates; each [RQ] hidden state searches the index (one pass, no re-encoding);
- minilm: the pipeline — the same generator, a separate MiniLM retriever given what OneGen's [RQ] read
  (the question and what was pasted or written since; cut keeping the question and the most recent text),
  over units carrying what OneGen's [RD] read ("fix the generator", §4.3.2);
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

import functools
import logging
import time
from pathlib import Path
from typing import Any

from onegen_core.config import BackboneConfig, Params
from onegen_core.data.elevant import article_sources, exported_predictions, write_linked_articles
from onegen_core.evaluation.linking import gold_by_article, held_out_articles, score_elevant, score_linking, windows_of
from onegen_core.evaluation.multihop import aggregate, held_out_questions, questions_missing_from_index
from onegen_core.evaluation.nil_threshold import abstention_scores, read_threshold
from onegen_core.inference.generation import RetrievalPolicy
from onegen_core.inference.index import check_checkpoint
from onegen_core.method.backbone import checkpoint_id, load_pretrained
from onegen_core.method.precision import resolve_inference_dtype
from onegen_core.prepare.entity_kb import PAGE_ID_PREFIX
from tasks.adapters import tracking
from tasks.adapters.eval_systems import (System, ed_baseline_piece, ed_piece, link_piece, multihop_piece,
                                         multihop_systems, system_names)
from tasks.adapters.ray_evaluation import (LazyRayGenerator, ReplicaSettings, ed_piece_on_ray, link_piece_on_ray,
                                           multihop_piece_on_ray)
from tasks.adapters.result_cache import ResultCache, cache_key, mentions_from_json
from tasks.report.evaluation import headline, write_report
from tasks.stage_common import machine_record, stage_params, write_json, write_jsonl

log = logging.getLogger("onegen.evaluate")


def run_multihop(p: Params, onegen: System, units, dtype: str, cache: ResultCache, out: Path, remote=None) -> dict:
    """dataset → setting → system → aggregate; each system's predictions as JSONL under `out`. `remote`: a
    `LazyRayGenerator` that runs OneGen's batches on Ray Data (`evaluate.executor: ray`)."""
    cfg = p.evaluate
    unit_records = units.records()
    unit_doc = {r.id: r.doc_id for r in unit_records}.get
    names = system_names(cfg.baselines, cfg.sft_checkpoint)
    # the baselines load (and MiniLM encodes the corpus) only when a piece is not kept yet
    systems = functools.cache(functools.partial(multihop_systems, onegen, unit_records, names,
                                                p.reconstruct.query_style, cfg.sft_checkpoint, dtype, cache.dir,
                                                cfg.baseline_unit_text))
    policy = RetrievalPolicy(mode="rag", max_retrievals=cfg.max_retrievals, max_new_tokens=cfg.max_new_tokens)
    datasets = {name: path for name, path in (("hotpotqa", cfg.hotpotqa), ("2wiki", cfg.wiki2)) if path}
    results: dict[str, dict] = {}
    for ds, path in datasets.items():
        records = held_out_questions(path, ds, cfg.max_questions)
        missing = questions_missing_from_index(records, {r.doc_id for r in unit_records})
        if missing:
            log.warning("%s: %d questions have paragraphs absent from the index (%s); their retrievals may "
                        "find nothing and count as misses", ds, len(missing), missing[:3])
        for setting in cfg.settings:
            for name in names:
                piece = f"multihop.{ds}.{setting}.{name}"
                make = functools.partial(multihop_piece, piece, systems, name, records, setting, policy, unit_doc,
                                         cfg.batch_size)
                if remote is not None and name == "onegen":
                    make = functools.partial(multihop_piece_on_ray, remote, piece, records, setting, cfg.batch_size,
                                             cfg.max_retrievals, cfg.max_new_tokens)
                rows = cache.get_or_put(piece, make)
                agg = aggregate(rows)
                results.setdefault(ds, {}).setdefault(setting, {})[name] = agg
                write_jsonl(out / "predictions" / f"{ds}.{setting}.{name}.jsonl", rows)
                log.info("%s: EM %.3f F1 %.3f R@1 sub-query %.3f question %.3f; misses %s", piece, agg["em"],
                         agg["f1"], agg["recall_at_1_subquery"], agg["recall_at_1_question"], agg["misses_by_reason"])
    return results


def run_entity_linking(p: Params, lm, tok, ck: str, cache: ResultCache, out: Path, remote=None) -> dict:
    """MD/EL end to end, ED with gold mentions and the ED baselines, scored exactly and by ELEVANT's
    rules; both OneGen passes exported as ELEVANT linked articles under `out`/elevant."""
    from tasks.adapters.lance_index import LanceIndex

    cfg = p.evaluate
    articles = held_out_articles(cfg.elevant, cfg.el_benchmarks, cfg.max_articles,
                                 Path(p.prepare.out_dir) / "el_split.json")
    if not articles:
        return {}
    kb = LanceIndex(cfg.index_uri, cfg.kb_table)
    check_checkpoint(kb, ck)
    windows = windows_of(articles, cfg.el_max_chars)
    gold = gold_by_article(articles)
    # the KB size stands beside every linking figure: disambiguation is harder the more entities it meets
    result: dict[str, Any] = {"articles": len(articles), "windows": len(windows),
                              "gold_mentions": sum(len(g) for g in gold.values()), "kb_entities": len(kb),
                              "kb_pages": sum(r.id.startswith(PAGE_ID_PREFIX) for r in kb.records())}
    link = (functools.partial(link_piece, lm, tok, windows, kb, ck, cfg.el_max_retrievals, cfg.el_batch_size,
                              cfg.el_draft_tokens) if remote is None else
            functools.partial(link_piece_on_ray, remote, windows, cfg.el_max_retrievals, cfg.el_batch_size,
                              cfg.el_draft_tokens))
    linked = cache.get_or_put("el.link", link)
    link_preds = mentions_from_json(linked["predictions"])
    scores = score_linking(articles, link_preds)
    result["windows_by_finish_reason"] = linked["finish"]
    # what the linking pass cost, and how much of the speculative copy's guessing was kept
    result["linking_pass"] = {k: linked.get(k) for k in ("forward_passes", "searches", "draft_tokens_fed",
                                                          "draft_tokens_kept", "seconds")}
    ed = cache.get_or_put("el.ed.onegen", functools.partial(ed_piece, lm, tok, windows, gold, kb) if remote is None
                          else functools.partial(ed_piece_on_ray, remote, windows, gold, cfg.el_batch_size))
    ed_preds = mentions_from_json(ed["predictions"])
    ed_scores = score_linking(articles, ed_preds)
    result["ed_mentions_truncated"] = ed["counts"].get("mentions_truncated", 0)
    systems = {"onegen": {b: {"md": s["md"], "el": s["el"], "ed": ed_scores[b]["el"]} for b, s in scores.items()}}
    for name in cfg.baselines:
        data = cache.get_or_put(f"el.ed.{name}", functools.partial(ed_baseline_piece, name, kb, articles, gold))
        scored = score_linking(articles, mentions_from_json(data["predictions"]))
        systems[name] = {b: {"ed": s["el"]} for b, s in scored.items()}
    result["systems"] = systems
    # the same links with `onegen link`'s NIL threshold (chosen on validation for this checkpoint)
    nil = read_threshold(p.serve.link_threshold_path, ck)
    result["nil_abstention"] = abstention_scores(articles, link_preds, *nil)
    # the same predictions by ELEVANT's own rules (word-boundary widening, unlinked = <NIL>, coreference
    # inferred from the text), as ELEVANT's evaluate.py would score the exported files
    elevant = {"link": score_elevant(articles, exported_predictions(link_preds)),
               "ed": score_elevant(articles, exported_predictions(ed_preds))}
    result["elevant_rules"] = {b: {"ner": s["ner"], "el": s["linking"], "ed": elevant["ed"][b]["linking"]}
                               for b, s in elevant["link"].items()}
    sources = article_sources(cfg.elevant)
    write_linked_articles(articles, link_preds, sources, out / "elevant", "onegen", "OneGen end to end: "
                          "constrained G->R generation marks mentions, each [RQ] links", linked.get("seconds"))
    write_linked_articles(articles, ed_preds, sources, out / "elevant", "onegen-ed", "OneGen entity "
                          "disambiguation: gold mentions given, one teacher-forced pass", ed.get("seconds"))
    return result


def run(p: Params) -> dict:
    from tasks.adapters.lance_index import LanceIndex

    cfg = p.evaluate
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    dtype = resolve_inference_dtype(p.backbone.inference_dtype)
    lm, tok, _ = load_pretrained(cfg.checkpoint, BackboneConfig(name=cfg.checkpoint, dtype=dtype))
    lm.eval()
    ck = checkpoint_id(cfg.checkpoint)
    units = LanceIndex(cfg.index_uri, cfg.units_table)
    check_checkpoint(units, ck)
    cache = ResultCache(Path("runs") / "evaluate", cache_key(ck, dtype, p.reconstruct.query_style, cfg))
    log.info("evaluating checkpoint %s (%s); partial results in %s", cfg.checkpoint, ck, cache.dir)
    result: dict[str, Any] = {"checkpoint": cfg.checkpoint, "checkpoint_id": ck}
    onegen = System("onegen", lm, tok, units, None, units.checkpoint_id)
    remote = None
    if cfg.executor == "ray":
        remote = LazyRayGenerator(ReplicaSettings(cfg.checkpoint, dtype, cfg.index_uri, cfg.units_table, cfg.kb_table,
                                                  max(1, int(p.ray_data.cpus_per_actor))), p.ray_data,
                                  p.distributed.ray_address)
    try:
        result["multihop"] = run_multihop(p, onegen, units, dtype, cache, out, remote)
        result["entity_linking"] = run_entity_linking(p, lm, tok, ck, cache, out, remote)
        if remote is not None and remote.nodes:
            result["ray_nodes"] = remote.nodes  # where OneGen's batches ran (none if every piece was kept)
    finally:
        if remote is not None:
            remote.close()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")  # with the machine: what a results table cites
    result["machine"] = machine_record()
    write_json(cfg.metrics_path, result)
    report = write_report(result, out)
    log.info("wrote %s and %s in %.0f s", cfg.metrics_path, report, result["seconds"])
    if cfg.log_mlflow:
        result["mlflow"] = tracking.log_evaluation(p.mlflow, cfg, result, out)
        write_json(cfg.metrics_path, result)  # now with where the MLflow run is
    return result


def main(argv: list[str] | None = None) -> None:
    print(headline(run(stage_params(__doc__, argv))))


if __name__ == "__main__":
    main()
