"""DVC stage `prepare`: strict loaders → normalised records, the embedded KB, the entity-linking split
and a data report (`report.json`: per input file, records in, out, skipped by field, the first skips).
Fails when a file's skip rate passes `prepare.max_skip_rate` or a file yields no record at all, and never
replaces a non-empty output with an empty one unless the settings ask for no such data."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from onegen_core.config import PrepareConfig
from onegen_core.data import (
    DataError,
    load_2wiki_with_report,
    load_elevant_with_report,
    load_hotpotqa_with_report,
    load_kb,
    load_passages,
    write_kb,
)
from onegen_core.data.elevant import benchmark_name
from onegen_core.data.multihop import record_to_dict
from onegen_core.prepare.entity_kb import build_kb, page_entities
from tasks.stage_common import (
    EmptyOutputError,
    SkipRateExceeded,
    check_skip_rate,
    stage_params,
    write_json,
    write_jsonl,
)

log = logging.getLogger("onegen.prepare")
__all__ = ["SkipRateExceeded", "run"]


def _load(loader, path: str, cfg: PrepareConfig, report: dict, seen: dict[str, str] | None = None,
          key: str | None = None) -> list:
    """The records of one file, its entry in the report (`key`, default the path) and the skip-rate
    gate. `seen` (id → file) makes a record whose id an earlier file already gave a counted skip."""
    records, errors = loader(path)
    if cfg.on_error == "raise" and errors:
        raise errors[0]
    if seen is not None:
        kept = []
        for r in records:
            first = seen.setdefault(r.id, path)
            if first != path:
                errors.append(DataError(path, r.id, "_id", f"duplicate _id: {first} has it too"))
            else:
                kept.append(r)
        records = kept
    n_in = len(records) + len(errors)
    by_field = Counter(e.field for e in errors)
    report[key or path] = {
        "records_in": n_in,
        "records_out": len(records),
        "skipped": len(errors),
        "skipped_by_field": dict(by_field),
        "skips": [str(e) for e in errors[:50]],
    }
    check_skip_rate(path, n_in, len(errors), cfg.max_skip_rate, errors[0] if errors else None)
    if errors:
        log.warning("%s: skipped %d of %d records (%s)", path, len(errors), n_in, dict(by_field))
    return records


def run(cfg: PrepareConfig) -> dict:
    out = Path(cfg.out_dir)
    unknown = set(cfg.el_eval_benchmarks) - {benchmark_name(p) for p in cfg.elevant}
    if unknown:  # before anything is written
        raise ValueError(f"prepare.el_eval_benchmarks names benchmarks not in prepare.elevant: {sorted(unknown)}")
    files: dict = {}
    seen: dict[str, str] = {}  # a question id is one question across all multi-hop files
    train = [r for p in cfg.hotpotqa_train for r in _load(load_hotpotqa_with_report, p, cfg, files, seen)]
    dev = _load(load_hotpotqa_with_report, cfg.hotpotqa_dev, cfg, files, seen) if cfg.hotpotqa_dev else []
    train += dev[: cfg.dev_train_count]
    held = dev[cfg.dev_train_count:]
    wiki = [r for p in cfg.wiki2_eval for r in _load(load_2wiki_with_report, p, cfg, files)]
    overlap = {r.id for r in train} & ({r.id for r in held} | {r.id for r in wiki})
    if overlap:
        raise DataError(cfg.hotpotqa_dev, sorted(overlap)[0], "_id", "question is both a training and a held-out question")
    # an output may go empty only when the settings give it no input, and the user says so
    allow = cfg.allow_empty_outputs
    write_jsonl(out / "multihop_train.jsonl", (record_to_dict(r) for r in train),
                None if cfg.hotpotqa_train or (cfg.hotpotqa_dev and cfg.dev_train_count) else
                "prepare.hotpotqa_train is empty and prepare.dev_train_count takes no dev question", allow)
    write_jsonl(out / "hotpotqa_heldout.jsonl", (record_to_dict(r) for r in held),
                "prepare.hotpotqa_dev is empty" if not cfg.hotpotqa_dev else
                f"prepare.dev_train_count ({cfg.dev_train_count}) takes all {len(dev)} dev questions"
                if len(dev) <= cfg.dev_train_count else None, allow)
    write_jsonl(out / "2wiki_heldout.jsonl", (record_to_dict(r) for r in wiki),
                None if cfg.wiki2_eval else "prepare.wiki2_eval is empty", allow)

    articles = [a for p in cfg.elevant for a in _load(load_elevant_with_report, p, cfg, files)]
    split = {"train": [], "eval": []}
    for path in cfg.elevant:
        name = benchmark_name(path)
        split["eval" if name in cfg.el_eval_benchmarks else "train"].append(name)
    passages: dict[str, str] = {}
    if cfg.kb:
        entities = load_kb(cfg.kb)
        kb_report = {"source": cfg.kb, "entities": len(entities)}
    else:
        passages = {p.title: p.text for path in cfg.kb_passages for p in load_passages(path)}
        for path in cfg.kb_context_passages:  # counted and gated like every input, under its own key
            for rec in _load(load_hotpotqa_with_report, path, cfg, files, key=f"{path} (kb_context_passages)"):
                passages.update({para.title: para.text().strip() for para in rec.context if para.sentences})
        entities, coverage = build_kb(articles, passages, split["train"])
        kb_report = {"source": "embedded: ELEVANT label names and types + same-title passages of "
                     + ", ".join(cfg.kb_passages + cfg.kb_context_passages), **coverage.to_dict()}
    kb_path = out / "kb.jsonl"
    if not entities and kb_path.is_file() and kb_path.stat().st_size and (cfg.kb or cfg.elevant
                                                                          or not cfg.allow_empty_outputs):
        why = ("prepare.elevant is empty, so" if not (cfg.kb or cfg.elevant) else "check prepare.kb and prepare.elevant:")
        raise EmptyOutputError(f"{kb_path}: {why} 0 entities to write, the file holds some; kept it"
                               + ("" if cfg.kb or cfg.elevant else
                                  ". Set prepare.allow_empty_outputs=true to accept an empty output"))
    write_kb(kb_path, entities)
    if cfg.kb_pages:  # entries only evaluation searches (encode.kb_pages): training's KB above is unchanged
        pages = dict(passages)
        for rec in wiki:
            for para in rec.context:
                if para.sentences:
                    pages.setdefault(para.title, para.text().strip())
        page_rows, page_counts = page_entities(entities, pages)
        pages_path = out / "kb_pages.jsonl"
        if not page_rows and pages_path.is_file() and pages_path.stat().st_size and not cfg.allow_empty_outputs:
            raise EmptyOutputError(f"{pages_path}: prepare.kb_passages and prepare.kb_context_passages give no "
                                   "page, so this output would go empty; kept it. Set "
                                   "prepare.allow_empty_outputs=true to accept an empty output")
        write_kb(pages_path, page_rows)
        kb_report["pages"] = page_counts
    split_counts = {k: sum(1 for a in articles if a.benchmark in v) for k, v in split.items()}
    write_json(out / "el_split.json", {"benchmarks": split, "articles": split_counts})

    report = {
        "multihop": {"train_questions": len(train), "hotpotqa_held_out": len(held), "2wiki_held_out": len(wiki)},
        "entity_linking": {"split_by_benchmark": split, "articles": split_counts,
                           "labels": sum(len(a.labels) for a in articles)},
        "kb": kb_report,
        "files": files,
    }
    write_json(out / "report.json", report)
    log.info("prepared %d training / %d + %d held-out questions; %d EL articles (%s); KB %d entities (+ %d "
             "pages for evaluation)", len(train), len(held), len(wiki), len(articles), split_counts, len(entities),
             kb_report.get("pages", {}).get("added", 0))
    return report


def main(argv: list[str] | None = None) -> None:
    run(stage_params(__doc__, argv).prepare)


if __name__ == "__main__":
    main()
