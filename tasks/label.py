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
import random
import re
from collections import Counter
from pathlib import Path

from onegen_core.config import Params
from onegen_core.data import DataError, load_elevant, load_hotpotqa, load_kb
from onegen_core.prepare.decomposition import Decomposition, to_hops
from onegen_core.prepare.entity_linking import escape_article
from onegen_core.prepare.labelling import EntityNegatives, cap_multihop_labels, entity_linking_examples
from onegen_core.prepare.multihop import escape_hop, escape_record, reconstruct_multihop
from tasks.stage_common import check_skip_rate, stage_params, write_json, write_jsonl

log = logging.getLogger("onegen.label")
MAX_LISTED_SKIPS = 50


class Skips:
    """Records that became no example, per task and reason (ids and numbers folded out of the reason so
    that like skips count together), with the first messages in full."""

    def __init__(self) -> None:
        self.by_task: dict[str, Counter] = {}
        self.listed: list[str] = []

    def add(self, task: str, where: str, message: str) -> None:
        """One skip of `task`: `where` (file:line, or record) and what was wrong."""
        named = re.sub(r"field '([^']*)'", r"field \1", message)
        reason = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "…", named)[:80]
        self.by_task.setdefault(task, Counter())[reason] += 1
        full = f"[{task}] {where}: {message}"
        if len(self.listed) < MAX_LISTED_SKIPS:
            self.listed.append(full)
        log.warning("skipped: %s", full)

    def count(self, task: str) -> int:
        return sum(self.by_task.get(task, Counter()).values())

    def first(self, task: str) -> str | None:
        return next((m for m in self.listed if m.startswith(f"[{task}]")), None)

    def to_dict(self) -> dict:
        return {task: dict(c.most_common()) for task, c in sorted(self.by_task.items())}


def read_decompositions(path: Path, records: dict, skips: Skips) -> dict[str, tuple[Decomposition, str]]:
    """example id → (decomposition, "file:line"), in file order. Bytes that are not UTF-8, a line that
    is not JSON and a malformed decomposition are `DataError`s naming file and line; a decomposition
    for a record that was not prepared is one too (annotate and prepare disagree); a second
    decomposition of one example is skipped and counted (it would train twice)."""
    out: dict[str, tuple[Decomposition, str]] = {}
    if not path.is_file():
        raise FileNotFoundError(f"{path}: decompositions missing; run `dvc repro annotate`")
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(str(path), f"line {n}", "<encoding>", f"not valid UTF-8: {e}") from None
            if not line.strip():
                continue
            try:
                d = Decomposition.from_dict(json.loads(line), where=where)
            except json.JSONDecodeError as e:
                raise DataError(str(path), f"line {n}", "<json>", f"invalid JSON at column {e.colno}: {e.msg}") from None
            except RecursionError:
                raise DataError(str(path), f"line {n}", "<json>", "JSON nested too deeply to read") from None
            except ValueError as e:
                field = (re.search(r"field '([^']+)'", str(e)) or re.search(r"(steps\[\d+\])", str(e)))
                raise DataError(str(path), f"line {n}", field.group(1) if field else "<record>",
                                str(e).removeprefix(f"{where}: ")) from None
            if d.example_id not in records:
                raise DataError(str(path), f"line {n}", "example_id",
                                f"{d.example_id!r} is not a prepared record (re-run annotate after prepare)")
            if d.example_id in out:
                skips.add("multihop", where, f"duplicate decomposition of {d.example_id!r} "
                                             f"(first at {out[d.example_id][1]}); kept the first")
                continue
            out[d.example_id] = (d, where)
    return out


def _annotate_dropped(annotated: Path) -> int:
    """How many records annotate dropped on purpose (`annotate.on_reject: drop`), from its report."""
    report = annotated / "report.json"
    if not report.is_file():
        return 0
    outcome = json.loads(report.read_text()).get("outcome", {})
    return sum(v for k, v in outcome.items() if k.startswith("dropped_"))


def multihop_examples(p: Params, stats: Counter, skips: Skips) -> list:
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


def validation_indices(tasks: list[str], val_fraction: float, val_count_by_task: dict[str, int], seed: int) -> set[int]:
    """Indices of the examples held apart for validation, given each example's task. One seeded shuffle
    of all examples; with `val_count_by_task` empty, its first round(val_fraction × n) go to validation;
    otherwise each task's first examples in that order: the count named for it (at most half of the task's
    examples, with a warning), or val_fraction of its own examples. Why per task: at 10 % of everything the multi-hop part of validation is 15 questions (30
    `[RQ]`, one query = 3.3 points), too few to tell two recipes apart on the goal that matters."""
    order = list(range(len(tasks)))
    random.Random(seed).shuffle(order)
    if not val_count_by_task:
        n_val = int(round(val_fraction * len(tasks)))
        if n_val >= len(tasks):  # val_fraction < 1, but a rounding on a tiny set must not empty train
            n_val = len(tasks) - 1
        return set(order[:n_val])
    val: set[int] = set()
    for task in sorted(set(tasks)):
        mine = [i for i in order if tasks[i] == task]
        if task in val_count_by_task:
            n = val_count_by_task[task]
            if n > len(mine) // 2:  # a small (debug, test) run keeps half of the task to train on
                log.warning("label.val_count_by_task.%s is %d but the label stage made %d %s examples: "
                            "validating on %d, training on the rest", task, n, len(mine), task, len(mine) // 2)
                n = len(mine) // 2
        else:
            n = min(int(round(val_fraction * len(mine))), len(mine) - 1)
        val.update(mine[:n])
    return val


def run(p: Params) -> dict:
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
    write_jsonl(out / "val.jsonl", (everything[i].to_dict() for i in sorted(val_idx)), allow_empty=n_val == 0)
    val_by_task = dict(sorted(Counter(everything[i].task for i in val_idx).items()))
    report = {"train": len(everything) - n_val, "val": n_val, "val_by_task": val_by_task, **dict(sorted(stats.items())),
              "skipped": skips.to_dict(), "skips": skips.listed}
    write_json(out / "report.json", report)
    log.info("labelled: %s", {k: v for k, v in report.items() if k != "skips"})
    return report


def selfrag_examples(p: Params, stats: Counter, skips: Skips | None = None) -> list:
    """Self-RAG records of `label.selfrag` as OneGen examples (task 'selfrag'): each relevant passage is
    the positive of the [RQ] before it; its hard negatives are the passages of the same files that
    MiniLM ranks in `label.selfrag_negative_window` (App. F). Malformed records are skipped, counted
    and listed, under `prepare.max_skip_rate`."""
    cfg = p.label
    if not cfg.selfrag:
        return []
    from onegen_core.data import load_selfrag_with_report
    from onegen_core.prepare.labelling import rank_window_negatives
    from onegen_core.prepare.selfrag import escape_selfrag, passage_id, reconstruct_selfrag

    skips = skips if skips is not None else Skips()
    records = []
    for path in cfg.selfrag:
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
    passages = list(dict.fromkeys(par.text for r in records for par in r.paragraphs()))
    negatives_of: dict[str, list[str]] = {}
    if len(passages) > 1:
        from tasks.baselines import MiniLMEncoder

        lo_f, hi_f = cfg.selfrag_negative_window
        n = len(passages) - 1  # ranked without the passage itself
        lo, hi = min(int(lo_f * n), n - 1), max(int(lo_f * n) + 1, min(n, round(hi_f * n)))
        ranked = rank_window_negatives(passages, passages, MiniLMEncoder().encode, (min(lo, n - 1), min(hi, n)))
        negatives_of = {text: [passages[k] for k in ks][: cfg.selfrag_max_negatives] for text, ks in zip(passages, ranked)}
    texts = {passage_id(t): t for t in passages}
    out, seen = [], Counter()
    for r in records:
        pars = r.paragraphs()
        negs = {k: [passage_id(t) for t in negatives_of.get(par.text, [])] for k, par in enumerate(pars)}
        try:
            ex = reconstruct_selfrag(r, negs, texts)
        except ValueError as e:
            skips.add("selfrag", f"record {r.id!r}", str(e))
            continue
        seen[ex.id] += 1
        if seen[ex.id] > 1:  # the published file merges sources whose ids repeat: keep both, apart
            from dataclasses import replace

            ex = replace(ex, id=f"{ex.id}~{seen[ex.id]}")
        out.append(ex)
    check_skip_rate("label: Self-RAG records", len(records), len(records) - len(out), p.prepare.max_skip_rate,
                    skips.first("selfrag"))
    stats["selfrag_examples"] = len(out)
    stats["selfrag_queries"] = sum(len(e.queries) for e in out)
    stats["selfrag_queries_without_positive"] = sum(1 for e in out for q in e.queries if not q.positives)
    return out


def main(argv: list[str] | None = None) -> None:
    run(stage_params(__doc__, argv))


if __name__ == "__main__":
    main()
