"""DVC stage `label`: decompositions + records → OneGen training examples with positives/negatives,
written as the documented JSONL training format (`train.jsonl`, `val.jsonl`), plus entity-linking
examples from the training benchmarks against the KB, and a report of counts.

Data text is escaped before reconstruction (`escape_special_tokens`: a literal `[RQ]` in an article is
text, not a retrieval), counted per task in the report. A record that cannot become an example (a
decomposition naming a paragraph the record lacks, a hop without a positive) is skipped, counted by
reason and listed in `report.json`; a task that loses more than `prepare.max_skip_rate` of its records,
or all of them, fails the stage. A decomposition file that is not valid JSON Lines is an error naming
file and line."""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from onegen_core.config import Params
from onegen_core.data import load_elevant, load_hotpotqa, load_kb, load_selfrag_with_report
from onegen_core.data.selfrag import SelfRagExample
from onegen_core.prepare.decomposition import read_decompositions, to_hops
from onegen_core.prepare.entity_linking import escape_article
from onegen_core.prepare.labelling import (
    EntityNegatives,
    cap_multihop_labels,
    entity_linking_examples,
    passage_negatives,
)
from onegen_core.prepare.multihop import escape_hop, escape_record, reconstruct_multihop
from onegen_core.prepare.selfrag import corpus_passages, escape_selfrag, reconstruct_with_negatives
from onegen_core.prepare.skips import Skips
from onegen_core.prepare.split import validation_indices
from tasks.stage_common import check_skip_rate, stage_params, write_json, write_jsonl

log = logging.getLogger("onegen.label")


def _annotate_dropped(annotated: Path) -> int:
    """How many records annotate dropped on purpose (`annotate.on_reject: drop`), from its report."""
    report = annotated / "report.json"
    if not report.is_file():
        return 0
    outcome = json.loads(report.read_text()).get("outcome", {})
    return sum(v for k, v in outcome.items() if k.startswith("dropped_"))


def multihop_examples(p: Params, stats: Counter, skips: Skips) -> list:
    """One example per prepared multi-hop record with a decomposition; a record without one (other than
    those annotate dropped on purpose) or whose hops cannot be reconstructed is skipped, under
    `prepare.max_skip_rate`."""
    cfg = p.label
    prepared, annotated = Path(p.prepare.out_dir), Path(p.annotate.out_dir)
    records = {r.id: r for r in load_hotpotqa(prepared / "multihop_train.jsonl")}
    decompositions = read_decompositions(annotated / "decompositions.jsonl", records, skips)
    duplicates = skips.count("multihop")
    examples = []
    for rec_id, (d, where) in decompositions.items():
        raw = records[rec_id]
        rec = escape_record(raw)
        stats["multihop_records_escaped"] += rec != raw
        try:
            hops = [escape_hop(h) for h in to_hops(d, raw)]
            ex = reconstruct_multihop(rec, hops, p.reconstruct, cfg.seed)
        except ValueError as e:  # a hop naming an unknown paragraph, or one without supporting sentences
            skips.add("multihop", where, str(e))
            continue
        examples.append(cap_multihop_labels(ex, cfg.positives_per_sentence, cfg.negatives_per_positive, cfg.seed))
    missing = [r for r in records if r not in decompositions]
    dropped = min(len(missing), _annotate_dropped(annotated))  # annotate.on_reject: drop, in its own report
    stats["multihop_dropped_by_annotate"] = dropped
    for rec_id in missing:
        skips.add("multihop", f"{prepared / 'multihop_train.jsonl'}: record {rec_id!r}",
                  "no decomposition in decompositions.jsonl")
    lost = skips.count("multihop") - duplicates - dropped  # records without an example, annotate's drops aside
    check_skip_rate("label: multi-hop records", len(records) - dropped, lost, p.prepare.max_skip_rate,
                    skips.first("multihop"))
    stats["multihop_skipped"] = skips.count("multihop")
    stats["multihop_examples"] = len(examples)
    stats["multihop_queries"] = sum(len(e.queries) for e in examples)
    return examples


def el_examples(p: Params, stats: Counter, skips: Skips) -> list:
    """Entity-linking examples (text windows) of the training benchmarks' articles against the KB; an
    article that cannot become examples is skipped, under `prepare.max_skip_rate` per file."""
    cfg = p.label
    prepared = Path(p.prepare.out_dir)
    split = json.loads((prepared / "el_split.json").read_text())["benchmarks"]
    kb_list = load_kb(prepared / "kb.jsonl")
    kb = {e.id: e for e in kb_list}
    negatives = EntityNegatives(kb_list, cfg.el_hard_negatives, cfg.el_random_negatives)
    out = []
    for path in p.prepare.elevant:
        articles = load_elevant(path, on_error="skip")  # prepare already reported what it skips
        if not (articles and articles[0].benchmark in split["train"]):
            continue
        before = skips.count("entity_linking")
        for a in articles:
            escaped = escape_article(a)
            local: Counter = Counter()
            try:
                made = entity_linking_examples(escaped, kb, negatives, cfg.el_max_chars, cfg.seed, local)
            except ValueError as e:
                skips.add("entity_linking", f"{path}: article {a.id!r}", str(e))
                continue
            stats.update(local)
            stats["el_articles_escaped"] += escaped != a
            out += made
        check_skip_rate(f"label: entity-linking articles of {path}", len(articles),
                        skips.count("entity_linking") - before, p.prepare.max_skip_rate, skips.first("entity_linking"))
    stats["el_examples"] = len(out)
    return out


def selfrag_records(p: Params, stats: Counter, skips: Skips) -> list[SelfRagExample]:
    """The Self-RAG records of `label.selfrag`, escaped; malformed ones skipped, counted and listed, each
    file under `prepare.max_skip_rate`."""
    records = []
    for path in p.label.selfrag:
        recs, errors = load_selfrag_with_report(path)
        n_in = len(recs) + len(errors)
        stats[f"selfrag_skipped: {path}"] += len(errors)
        for e in errors:
            skips.add("selfrag", f"{e.file}: record {e.record}", f"field '{e.field}': {e.message}")
        check_skip_rate(f"label: Self-RAG records of {path}", n_in, len(errors), p.prepare.max_skip_rate,
                        errors[0] if errors else None)
        escaped = [escape_selfrag(r) for r in recs]
        stats["selfrag_records_escaped"] += sum(e != r for e, r in zip(escaped, recs))
        records += escaped
    return records


def selfrag_examples(p: Params, stats: Counter, skips: Skips | None = None) -> list:
    """Self-RAG records of `label.selfrag` as OneGen examples (task 'selfrag'): each relevant passage is
    the positive of the [RQ] before it; its hard negatives are the passages of the same files that
    MiniLM ranks in `label.selfrag_negative_window` (App. F). Malformed records are skipped, counted
    and listed, under `prepare.max_skip_rate`."""
    cfg = p.label
    if not cfg.selfrag:
        return []
    skips = skips if skips is not None else Skips()
    records = selfrag_records(p, stats, skips)
    passages = corpus_passages(records)
    negatives_of: dict[str, list[str]] = {}
    if len(passages) > 1:  # MiniLM is loaded only when there is something to rank
        from tasks.adapters.baselines import MiniLMEncoder

        negatives_of = passage_negatives(passages, MiniLMEncoder().encode, cfg.selfrag_negative_window,
                                         cfg.selfrag_max_negatives)
    out = reconstruct_with_negatives(records, passages, negatives_of, skips)
    check_skip_rate("label: Self-RAG records", len(records), len(records) - len(out), p.prepare.max_skip_rate,
                    skips.first("selfrag"))
    stats["selfrag_examples"] = len(out)
    stats["selfrag_queries"] = sum(len(e.queries) for e in out)
    stats["selfrag_queries_without_positive"] = sum(1 for e in out for q in e.queries if not q.positives)
    return out


def run(p: Params) -> dict:
    """Every task's examples, split into `train.jsonl`/`val.jsonl` in `label.out_dir`, and the report."""
    cfg = p.label
    out = Path(cfg.out_dir)
    stats: Counter = Counter()
    skips = Skips()
    examples = multihop_examples(p, stats, skips)
    el = el_examples(p, stats, skips)
    selfrag = selfrag_examples(p, stats, skips)

    everything = examples + el + selfrag
    if not everything:
        raise RuntimeError("label: 0 examples (no multi-hop record, training ELEVANT article or Self-RAG record "
                           "became one); nothing written")
    val_idx = validation_indices([e.task for e in everything], cfg.val_fraction, cfg.val_count_by_task, cfg.seed)
    n_val = len(val_idx)
    write_jsonl(out / "train.jsonl", (everything[i].to_dict() for i in range(len(everything)) if i not in val_idx))
    write_jsonl(out / "val.jsonl", (everything[i].to_dict() for i in sorted(val_idx)),
                "label.val_fraction and label.val_count_by_task hold out no example" if n_val == 0 else None,
                p.prepare.allow_empty_outputs)
    val_by_task = dict(sorted(Counter(everything[i].task for i in val_idx).items()))
    report = {"train": len(everything) - n_val, "val": n_val, "val_by_task": val_by_task, **dict(sorted(stats.items())),
              "skipped": skips.to_dict(), "skips": skips.listed}
    write_json(out / "report.json", report)
    log.info("labelled: %s", {k: v for k, v in report.items() if k != "skips"})
    return report


def main(argv: list[str] | None = None) -> None:
    run(stage_params(__doc__, argv))


if __name__ == "__main__":
    main()
