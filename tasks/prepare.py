"""DVC stage `prepare`: strict loaders → normalised records, the embedded KB, the entity-linking split
and a data report (counts in, out, skipped by reason). Fails when a file's skip rate passes
`prepare.max_skip_rate`."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from onegen_core.config import PrepareConfig
from onegen_core.data import (
    DataError,
    load_2wiki_with_report,
    load_elevant_with_report,
    load_hotpotqa,
    load_hotpotqa_with_report,
    load_kb,
    load_passages,
    write_kb,
)
from onegen_core.data.elevant import benchmark_name
from onegen_core.data.multihop import record_to_dict
from onegen_core.prepare.entity_kb import build_kb
from tasks.stage_common import stage_params, write_json, write_jsonl

log = logging.getLogger("onegen.prepare")


class SkipRateExceeded(RuntimeError):
    pass


def _load(loader, path: str, cfg: PrepareConfig, report: dict) -> list:
    if cfg.on_error == "raise":
        records, errors = loader(path)
        if errors:
            raise errors[0]
    else:
        records, errors = loader(path)
    n_in = len(records) + len(errors)
    by_field = Counter(e.field for e in errors)
    report[path] = {
        "records_in": n_in,
        "records_out": len(records),
        "skipped": len(errors),
        "skipped_by_field": dict(by_field),
        "skips": [str(e) for e in errors[:50]],
    }
    if n_in and len(errors) / n_in > cfg.max_skip_rate:
        raise SkipRateExceeded(f"{path}: {len(errors)}/{n_in} records skipped (> {cfg.max_skip_rate:.0%}); first: {errors[0]}")
    if errors:
        log.warning("%s: skipped %d of %d records (%s)", path, len(errors), n_in, dict(by_field))
    return records


def run(cfg: PrepareConfig) -> dict:
    out = Path(cfg.out_dir)
    files: dict = {}
    train = [r for p in cfg.hotpotqa_train for r in _load(load_hotpotqa_with_report, p, cfg, files)]
    dev = _load(load_hotpotqa_with_report, cfg.hotpotqa_dev, cfg, files) if cfg.hotpotqa_dev else []
    train += dev[: cfg.dev_train_count]
    held = dev[cfg.dev_train_count:]
    wiki = [r for p in cfg.wiki2_eval for r in _load(load_2wiki_with_report, p, cfg, files)]
    overlap = {r.id for r in train} & ({r.id for r in held} | {r.id for r in wiki})
    if overlap:
        raise DataError(cfg.hotpotqa_dev, sorted(overlap)[0], "_id", "question is both a training and a held-out question")
    write_jsonl(out / "multihop_train.jsonl", (record_to_dict(r) for r in train))
    write_jsonl(out / "hotpotqa_heldout.jsonl", (record_to_dict(r) for r in held))
    write_jsonl(out / "2wiki_heldout.jsonl", (record_to_dict(r) for r in wiki))

    articles = [a for p in cfg.elevant for a in _load(load_elevant_with_report, p, cfg, files)]
    split = {"train": [], "eval": []}
    for path in cfg.elevant:
        name = benchmark_name(path)
        split["eval" if name in cfg.el_eval_benchmarks else "train"].append(name)
    unknown = set(cfg.el_eval_benchmarks) - {benchmark_name(p) for p in cfg.elevant}
    if unknown:
        raise ValueError(f"prepare.el_eval_benchmarks names benchmarks not in prepare.elevant: {sorted(unknown)}")
    if cfg.kb:
        entities = load_kb(cfg.kb)
        kb_report = {"source": cfg.kb, "entities": len(entities)}
    else:
        passages = {p.title: p.text for path in cfg.kb_passages for p in load_passages(path)}
        for path in cfg.kb_context_passages:
            for rec in load_hotpotqa(path, on_error="skip"):
                passages.update({para.title: para.text().strip() for para in rec.context if para.sentences})
        entities, coverage = build_kb(articles, passages)
        kb_report = {"source": "embedded: ELEVANT label names and types + same-title passages of "
                     + ", ".join(cfg.kb_passages + cfg.kb_context_passages), **coverage.to_dict()}
    write_kb(out / "kb.jsonl", entities)
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
    log.info("prepared %d training / %d + %d held-out questions; %d EL articles (%s); KB %d entities",
             len(train), len(held), len(wiki), len(articles), split_counts, len(entities))
    return report


def main(argv: list[str] | None = None) -> None:
    run(stage_params(__doc__, argv).prepare)


if __name__ == "__main__":
    main()
