"""The headline of the last run, read from `metrics/`: the table `make run` ends with, the README's headline
block, and the "current figures" block of docs/RESULTS.md.

Why one module writes all three: a figure typed by hand into a README drifts from the run that produced
it. Here every number is read from a committed metrics file, every key it reads must exist, and `--check`
(run by tests/test_readme.py) fails when a document's generated block is no longer what the files give.

    python -m tasks.report.headline                              # the table, for a terminal
    python -m tasks.report.headline --readme README.md           # rewrite the README's headline block
    python -m tasks.report.headline --results docs/RESULTS.md    # rewrite the results page's block
    python -m tasks.report.headline --check README.md            # exit 1 if a generated block differs
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onegen_core.data.atomic_write import write_text_atomic
from tasks.report.evaluation import el_table, elevant_table, multihop_table

METRICS_DIR = Path("metrics")
REPORT_PATH = "reports/evaluate/report.md"  # evaluate.out_dir in params.yaml
# evaluate.json records the machine since 2026-12-07 (`machine`); a run from before says where to look
NO_MACHINE = "see docs/RESULTS.md"
SYSTEMS = (("onegen", "OneGen"), ("minilm", "MiniLM pipeline"), ("bm25", "BM25"))
MULTIHOP_SETS = (("hotpotqa", "distractor"), ("hotpotqa", "open"), ("2wiki", "distractor"), ("2wiki", "open"))
DATASET_NAMES = {"hotpotqa": "HotpotQA", "2wiki": "2Wiki"}
MEASURE = "R@1 / EM / F1 (%)"  # what a multi-hop cell holds; the linking row names its own measure
MEASURES = "R@1 per sub-query, one generator for all three systems; ED on gold mentions."
EL_LABEL = "Entity linking, ED F1"
NOT_RUN = "–"  # a system the run did not evaluate (e.g. `-S evaluate.baselines=[]`)


class HeadlineError(Exception):
    """A metrics file missing or unreadable, a key it lacks, or a document without its block. The message is
    the one line the user sees (no traceback)."""


@dataclass(frozen=True)
class Row:
    """One line of the headline: a held-out set and one cell per system, in `SYSTEMS` order."""

    label: str
    cells: tuple[str, ...]
    source: str  # the metrics file and keys the cells are read from


@dataclass(frozen=True)
class RunRecord:
    """Which run the figures are from, as its own metrics files record it."""

    date: str  # the day its Ray checkpoint was written (train.json), or "date not recorded"
    checkpoint_id: str
    ray_run: str
    train_run: str  # MLflow run ids
    evaluate_run: str | None
    tracking_uri: str
    machine: str  # "Intel(R) Xeon(R) …, 2 cores" from evaluate.json's record, or NO_MACHINE


def machine_words(evaluate: dict) -> str:
    """The machine evaluate.json records, in a few words ('<cpu>, 2 cores[, <gpu>]')."""
    m = evaluate.get("machine")
    if not m:
        return NO_MACHINE
    return ", ".join(x for x in (m.get("cpu"), f"{m.get('cores')} cores", m.get("gpu")) if x)


@dataclass(frozen=True)
class Headline:
    rows: list[Row]
    run: RunRecord
    held_out: str  # what the rows were measured on, in words
    stage_seconds: tuple[tuple[str, float], ...]  # (stage, seconds) as its metrics file records them


# ---------------------------------------------------------------------------------------------------------
# Reading metrics/: every key checked, every failure one line


def load_metrics(metrics_dir: Path, name: str) -> dict:
    path = Path(metrics_dir) / name
    if not path.is_file():
        raise HeadlineError(f"no {path}: run `make run` to write it (a fresh clone has it committed)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeadlineError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(data, dict):
        raise HeadlineError(f"{path}: a JSON object expected, got {type(data).__name__}")
    return data


def need(doc: dict, file: str, *keys: str):
    """`doc[k1][k2]…`, or a HeadlineError naming the file and the dotted key that is missing."""
    node = doc
    for i, k in enumerate(keys):
        if not isinstance(node, dict) or k not in node:
            raise HeadlineError(f"{file}: no key {'.'.join(keys[: i + 1])}")
        node = node[k]
    return node


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def dec(x: float) -> str:
    """A rate as the results page writes it: .783"""
    return f"{x:.3f}".removeprefix("0")


# ---------------------------------------------------------------------------------------------------------
# The headline: at most five rows, each number from metrics/evaluate.json


def multihop_row(evaluate: dict, dataset: str, setting: str) -> Row:
    systems = need(evaluate, "evaluate.json", "multihop", dataset, setting)
    cells = []
    for name, _ in SYSTEMS:
        if name not in systems:
            cells.append(NOT_RUN)
            continue
        key = ("multihop", dataset, setting, name)
        r1, em, f1 = (need(evaluate, "evaluate.json", *key, m) for m in ("recall_at_1_subquery", "em", "f1"))
        cells.append(f"{pct(r1)} / {pct(em)} / {pct(f1)}")
    return Row(f"{DATASET_NAMES.get(dataset, dataset)} {setting}", tuple(cells),
               f"evaluate.json: multihop.{dataset}.{setting}.<system>.{{recall_at_1_subquery,em,f1}}")


def linking_row(evaluate: dict) -> Row:
    systems = need(evaluate, "evaluate.json", "entity_linking", "systems")
    cells = tuple(pct(need(evaluate, "evaluate.json", "entity_linking", "systems", name, "all", "ed", "f1"))
                  if name in systems else NOT_RUN for name, _ in SYSTEMS)
    return Row(EL_LABEL, cells, "evaluate.json: entity_linking.systems.<system>.all.ed.f1")


def rows_from(evaluate: dict) -> list[Row]:
    """The headline rows of one evaluate.json: the multi-hop sets it evaluated (a set the run left out, as
    `-S evaluate.settings=[distractor]` does, is left out here too), then entity linking if it ran."""
    multihop = need(evaluate, "evaluate.json", "multihop")
    rows = [multihop_row(evaluate, ds, st) for ds, st in MULTIHOP_SETS if st in multihop.get(ds, {})]
    if evaluate.get("entity_linking"):
        rows.append(linking_row(evaluate))
    if not rows:
        raise HeadlineError("evaluate.json: no multi-hop set and no entity linking to report")
    return rows


def headline_rows(metrics_dir: Path = METRICS_DIR) -> list[Row]:
    """The headline rows (at most five) of the run whose files are in `metrics_dir`."""
    return rows_from(load_metrics(metrics_dir, "evaluate.json"))


def held_out_words(evaluate: dict) -> str:
    """'50 HotpotQA and 10 2Wiki questions, 133 entity-linking articles': the sizes the rows rest on."""
    sizes = []
    for ds in dict.fromkeys(ds for ds, _ in MULTIHOP_SETS):
        settings = evaluate["multihop"].get(ds) or {}
        if settings:  # every setting of a dataset asks the same questions
            n = need(evaluate, "evaluate.json", "multihop", ds, next(iter(settings)), "onegen", "questions")
            sizes.append(f"{n} {DATASET_NAMES.get(ds, ds)}")
    parts = [" and ".join(sizes) + " questions"] if sizes else []
    if evaluate.get("entity_linking"):
        parts.append(f"{need(evaluate, 'evaluate.json', 'entity_linking', 'articles')} entity-linking articles")
    return ", ".join(parts)


def run_record(train: dict, evaluate: dict) -> RunRecord:
    stamp = re.search(r"checkpoint_(\d{4}-\d{2}-\d{2})_", need(train, "train.json", "ray_checkpoint"))
    mlflow = evaluate.get("mlflow") or {}
    return RunRecord(date=stamp.group(1) if stamp else "date not recorded",
                     checkpoint_id=need(evaluate, "evaluate.json", "checkpoint_id"),
                     ray_run=need(train, "train.json", "ray_run"),
                     train_run=need(train, "train.json", "mlflow_run_id"),
                     evaluate_run=mlflow.get("run_id"),
                     tracking_uri=need(train, "train.json", "mlflow_tracking_uri"),
                     machine=machine_words(evaluate))


def load_headline(metrics_dir: Path = METRICS_DIR) -> Headline:
    docs = {name: load_metrics(metrics_dir, f"{name}.json") for name in ("evaluate", "train", "encode")}
    seconds = tuple((name, need(docs[name], f"{name}.json", "seconds")) for name in ("train", "encode", "evaluate"))
    return Headline(rows_from(docs["evaluate"]), run_record(docs["train"], docs["evaluate"]),
                    held_out_words(docs["evaluate"]), seconds)


# ---------------------------------------------------------------------------------------------------------
# Renderers


def aligned(lines: list[tuple[str, ...]], gap: int = 3) -> list[str]:
    """Plain-text columns, each as wide as its widest cell."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return ["".join(c.ljust(w + gap) for c, w in zip(line, widths)).rstrip() for line in lines]


def render_terminal(h: Headline) -> str:
    header = (MEASURE, *(title for _, title in SYSTEMS))
    table = aligned([header, *((r.label, *r.cells) for r in h.rows)])
    evaluate = f", evaluate run {h.run.evaluate_run[:8]}…" if h.run.evaluate_run else ""
    return "\n".join([
        f"Run trained on {h.run.date}, checkpoint {h.run.checkpoint_id} (machine: {h.run.machine})", "",
        *table, "",
        f"Held out: {h.held_out}.",
        MEASURES,
        f"Full report: {REPORT_PATH}",
        f"MLflow: training run {h.run.train_run}{evaluate} in {h.run.tracking_uri} (browse: `onegen ui`)",
    ])


def render_markdown(h: Headline) -> str:
    """The README's block; its link is relative to the repository root, where the README is."""
    lines = [f"| {MEASURE} | " + " | ".join(title for _, title in SYSTEMS) + " |",
             "|---|" + "---:|" * len(SYSTEMS)]
    lines += [f"| {r.label} | " + " | ".join(r.cells) + " |" for r in h.rows]
    return "\n".join([*lines, "",
                      f"From `metrics/evaluate.json`: the run trained on {h.run.date}, checkpoint "
                      f"`{h.run.checkpoint_id}`,",
                      f"MLflow training run `{h.run.train_run}`; machine: "
                      + (f"{h.run.machine}." if h.run.machine != NO_MACHINE else "see [docs/RESULTS.md](docs/RESULTS.md)."),
                      f"Held out: {h.held_out}.", MEASURES,
                      "Stage times on that machine: " + ", ".join(f"`{n}` {s:,.0f} s" for n, s in h.stage_seconds)
                      + "."])


# ---------------------------------------------------------------------------------------------------------
# The results page's current figures: one table per task, each with the run it comes from


def run_line(run: RunRecord) -> str:
    evaluate = f", evaluate run `{run.evaluate_run}`" if run.evaluate_run else ""
    return (f"Run: trained on {run.date}, Ray run `{run.ray_run}`, checkpoint `{run.checkpoint_id}`; MLflow "
            f"training run `{run.train_run}`{evaluate}.")


def training_section(train: dict) -> list[str]:
    f = "train.json"
    before, after = need(train, f, "val_before"), need(train, f, "val_after")
    rows = [("all `[RQ]`, own candidates", "recall_at_1", "queries"),
            ("multi-hop, own candidates", "multihop/recall_at_1", "multihop/queries"),
            ("entity linking, own candidates", "entity_linking/recall_at_1", "entity_linking/queries"),
            ("all `[RQ]`, over every validation unit", "open_recall_at_1", "queries")]
    lines = ["### Training (`metrics/train.json`, the same run)", "",
             f"{need(train, f, 'steps')} steps on {need(train, f, 'workers')} Ray worker(s) in "
             f"{need(train, f, 'seconds'):,.0f} s ({need(train, f, 'tokens_per_s'):.0f} tokens/s); Lg "
             f"{need(train, f, 'lm_loss_first'):.3f} → {need(train, f, 'lm_loss_last'):.3f}, Lr "
             f"{need(train, f, 'retrieval_loss_first'):.3f} → {need(train, f, 'retrieval_loss_last'):.3f}.", "",
             "| validation Recall@1 | `[RQ]` | before training | after |", "|---|---:|---:|---:|"]
    for label, key, count in rows:
        lines.append(f"| {label} | {need(after, f, count):.0f} | {dec(need(before, f, key))} | "
                     f"{dec(need(after, f, key))} |")
    return lines


def encode_section(encode: dict) -> list[str]:
    f = "encode.json"
    lines = ["### Encoding (`metrics/encode.json`, the same run)", "",
             f"Checkpoint `{need(encode, f, 'checkpoint_id')}`, {need(encode, f, 'seconds'):.0f} s.", "",
             "| table | documents | `[RD]` vectors | units cut by truncation |", "|---|---:|---:|---:|"]
    for label, table in (("held-out passages", encode), ("entity KB", encode.get("kb"))):
        if table:
            lines.append(f"| {label} (`{need(table, f, 'table')}`) | {need(table, f, 'documents'):,} | "
                         f"{need(table, f, 'units_in_index'):,} | {need(table, f, 'units_truncated')} |")
    return lines


def lambda_sweep_section(sweep: dict) -> list[str]:
    f = "lambda_sweep.json"
    hp, wk = "eval/hotpotqa/distractor/onegen/", "eval/2wiki/distractor/onegen/"
    lines = ["### λr sweep (`metrics/lambda_sweep.json`)", "",
             f"Sweep `{need(sweep, f, 'sweep_id')}`. {need(sweep, f, 'what')}", "",
             "| λr | HotpotQA distractor R@1 sub-query | R@1 question | EM | F1 | 2Wiki distractor R@1 sub-query | "
             "validation R@1 (all / multi-hop / EL) | over every unit | Lg last | Lr last | train s |",
             "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in need(sweep, f, "rows"):
        v = lambda k: need(r, f, k)  # noqa: E731
        lines.append(f"| {v('lambda_r'):g} | {pct(v(hp + 'recall_at_1_subquery'))} | "
                     f"{pct(v(hp + 'recall_at_1_question'))} | {pct(v(hp + 'em'))} | {pct(v(hp + 'f1'))} | "
                     f"{pct(v(wk + 'recall_at_1_subquery'))} | {dec(v('val/recall_at_1'))} / "
                     f"{dec(v('val/multihop/recall_at_1'))} / {dec(v('val/entity_linking/recall_at_1'))} | "
                     f"{dec(v('val/open_recall_at_1'))} | {v('lm_loss_last'):.2f} | "
                     f"{v('retrieval_loss_last'):.2f} | {v('seconds'):,.0f} |")
    base = sweep.get("baselines_same_run") or {}
    if base:
        lines += ["", "Baselines on the same held-out questions (HotpotQA distractor, R@1 sub-query / EM / F1): " +
                  "; ".join(f"{name} {pct(need(b, f, 'recall_at_1_subquery'))} / {pct(need(b, f, 'em'))} / "
                            f"{pct(need(b, f, 'f1'))}" for name, b in base.items()) + "."]
    return lines


def trials_section(trials: dict) -> list[str]:
    f = "val_multihop_trials.json"
    lines = ["### Validation trials (`metrics/val_multihop_trials.json`)", "", need(trials, f, "what"), "",
             "| trial | settings (`-S`) | distractor R@1 | first `[RQ]` | later | open R@1 |",
             "|---|---|---:|---:|---:|---:|"]
    entries = [(name, t, "; ".join(t.get("-S", [])) or NOT_RUN) for name, t in need(trials, f, "trials").items()]
    entries += [(f"{name} (same text)", t, "baseline") for name, t in (trials.get("baselines") or {}).items()]
    for name, t, settings in entries:
        d = need(t, f, "distractor")
        open_ = dec(need(t["open"], f, "recall_at_1")) if "open" in t else NOT_RUN
        lines.append(f"| {name} | {settings} | {dec(need(d, f, 'recall_at_1'))} | "
                     f"{dec(need(d, f, 'recall_at_1_first_rq'))} | {dec(need(d, f, 'recall_at_1_later_rq'))} | "
                     f"{open_} |")
    return lines


def efficiency_section(eff: dict) -> list[str]:
    """Fig. 3 as bench/efficiency.py measured it: per generator the physical limit, then every point with
    every ratio as median [min–max] over the interleaved repeats (those where OneGen is slower included)."""
    f = "efficiency.json"
    setup = need(eff, f, "setup")
    lines = ["### Efficiency bench (`metrics/efficiency.json`, `dvc repro bench`)", "",
             f"Fig. 3 (§4.3.1, App. F.5.1) on {need(setup, f, 'cpu')} with {need(setup, f, 'cores')} cores, "
             f"{need(setup, f, 'repeats')} interleaved repeats a point, {need(eff, f, 'seconds'):,.0f} s in all. "
             "Ratios are time over time, median [min–max] over the repeats; the physical limit is OneGen's extra "
             "time per retrieval over the lower bound divided by one decode step plus one search "
             f"(goal ≤ {need(setup, f, 'goal_physical_limit')}).", ""]
    for kind, m in need(setup, f, "models").items():
        s = need(eff, f, "summary", kind)
        w = s["physical_limit_worst_point"]
        lines += [f"**{kind}** ({m['parameters'] / 1e6:.1f}M parameters, {m['layers']} layers; MiniLM is "
                  f"{m['retriever_share_of_generator']:.1%} of it, the paper's Contriever {m['paper_retriever_share']:.1%} "
                  f"of Mistral-7B): physical limit {w['median']:.2f} [{w['min']:.2f}–{w['max']:.2f}] at its worst "
                  f"point ({w['setting']}, x={w['x']}), median over points {s['physical_limit_median_over_points']:.2f}; "
                  f"goal {'met' if s['physical_limit_goal_met'] else 'missed'}. Extra decoder calls per retrieval over "
                  f"the lower bound: " + ", ".join(f"{k} {'/'.join(f'{v:g}' for v in vs)}"
                                                  for k, vs in s["extra_passes_per_retrieval"].items()) + ".", "",
                  "| setting | x | GRIT / OneGen | pipeline / OneGen | OneGen / lower | physical limit |",
                  "|---|---:|---:|---:|---:|---:|"]
        for p in (p for p in need(eff, f, "points") if p["model"] == kind):
            cell = lambda v: f"{v['median']:.3f} [{v['min']:.3f}–{v['max']:.3f}]" if v else NOT_RUN  # noqa: E731
            r = p["ratios"]
            lines.append(f"| ({p['setting']}) | {p['x']} | {cell(r.get('grit/onegen'))} | {cell(r.get('pipeline/onegen'))} "
                         f"| {cell(r.get('onegen/lower'))} | {cell(p.get('physical_limit'))} |")
        lines.append("")
    lines += ["What each extra call is: " + "; ".join(f"{k}: {v}" for k, v in need(eff, f, "passes").items()) + "."]
    return lines


def efficiency_quick_section(ref: dict, checks: dict) -> list[str]:
    """The quick grid's reference (K rounds, each a fresh process, spreads pooled over every repeat) and
    how re-runs of the quick grid fell against it: the spread a user re-running the bench can expect."""
    f = "efficiency_quick.json"
    setup = need(ref, f, "setup")
    lines = ["### Efficiency: the quick grid's spread across processes (`metrics/efficiency_quick.json`)", "",
             (f"The quick grid (tiny model) run {need(setup, f, 'rounds')} times, each round a fresh process, "
              f"{need(setup, f, 'repeats')} repeats a round; every ratio's median [min–max] is over all "
              f"{need(setup, f, 'rounds') * need(setup, f, 'repeats')} repeats, then each round's median. The full "
              "grid above has one process's spread only."), "",
             "| setting | x | ratio | pooled median [min–max] | round medians |", "|---|---:|---|---:|---|"]
    for p in need(ref, f, "points"):
        items = [*p["ratios"].items()] + ([("physical limit", p["physical_limit"])] if "physical_limit" in p else [])
        for k, v in items:
            lines.append(f"| ({p['setting']}) | {p['x']} | {k} | {v['median']:.3f} [{v['min']:.3f}–{v['max']:.3f}] | "
                         + ", ".join(f"{m:.3f}" for m in need(v, f, "round_medians")) + " |")
    g = "efficiency_quick_checks.json"
    runs = need(checks, g, "runs")
    lines += ["", f"Re-runs of `python -m bench.efficiency --quick --check metrics/{f}` (`metrics/{g}`): "
              + "; ".join(f"{c['ratios_inside']} of {c['ratios_compared']} ratio medians inside the pooled spread "
                          f"({c['inside']} of {c['compared']} with the physical limit)" for c in runs) + "."]
    outside = [f"{r['setting']}/{r['x']} {r['ratio']} {r['median']:.3f} vs "
               f"[{r['reference'][0]:.3f}–{r['reference'][1]:.3f}]" for c in runs for r in c["rows"] if not r["inside"]]
    if outside:
        lines.append("Outside: " + "; ".join(outside) + ".")
    return lines


def results_markdown(metrics_dir: Path = METRICS_DIR) -> str:
    """The current-figures block of docs/RESULTS.md."""
    evaluate = load_metrics(metrics_dir, "evaluate.json")
    train = load_metrics(metrics_dir, "train.json")
    load = lambda name: load_metrics(metrics_dir, name)  # noqa: E731
    lines = ["### Multi-hop QA (`metrics/evaluate.json`)", "", run_line(run_record(train, evaluate)), "",
             *multihop_table(evaluate), "",
             "### Entity linking (`metrics/evaluate.json`, the same run)", "", *el_table(evaluate), ""]
    if elevant_table(evaluate):
        lines += ["ELEVANT's rules (InKB mode):", "", *elevant_table(evaluate), ""]
    for section in (training_section(train), encode_section(load("encode.json")),
                    lambda_sweep_section(load("lambda_sweep.json")),
                    trials_section(load("val_multihop_trials.json")), efficiency_section(load("efficiency.json")),
                    efficiency_quick_section(load("efficiency_quick.json"), load("efficiency_quick_checks.json"))):
        lines += [*section, ""]
    return "\n".join(lines).rstrip("\n")


# ---------------------------------------------------------------------------------------------------------
# Generated blocks in documents


@dataclass(frozen=True)
class Block:
    name: str
    option: str  # the command-line option that rewrites it
    render: Callable[[Path], str]

    def markers(self) -> tuple[str, str]:
        return f"<!-- {self.name}:start -->", f"<!-- {self.name}:end -->"

    def body(self, metrics_dir: Path) -> str:
        note = (f"<!-- generated from metrics/ by `python -m tasks.report.headline {self.option} FILE`; "
                "edits here are overwritten -->")
        return f"{note}\n\n{self.render(metrics_dir)}"


BLOCKS = (Block("headline", "--readme", lambda d: render_markdown(load_headline(d))),
          Block("results", "--results", results_markdown))


def block_text(text: str, block: Block) -> str | None:
    """What lies between the block's markers, or None when the document has no such block."""
    start, end = block.markers()
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        return None
    return text[i + len(start): j].strip("\n")


def with_block(text: str, block: Block, body: str, path: Path) -> str:
    start, end = block.markers()
    if block_text(text, block) is None:
        raise HeadlineError(f"{path}: no {start} … {end} block to write")
    i, j = text.find(start), text.find(end)
    return f"{text[:i]}{start}\n{body}\n{text[j:]}"


def read_document(path: Path) -> str:
    if not path.is_file():
        raise HeadlineError(f"no {path}")
    return path.read_text(encoding="utf-8")


def write_block(path: Path, block: Block, metrics_dir: Path) -> str:
    text = read_document(path)
    new = with_block(text, block, block.body(metrics_dir), path)
    if new == text:
        return f"{path}: {block.name} block already matches {metrics_dir}/"
    write_text_atomic(path, new)
    return f"{path}: {block.name} block rewritten from {metrics_dir}/"


def stale_blocks(path: Path, metrics_dir: Path) -> list[str]:
    """One line per generated block of `path` that differs from what `metrics_dir` gives (empty: all match)."""
    text = read_document(path)
    found = [(b, block_text(text, b)) for b in BLOCKS]
    if all(body is None for _, body in found):
        raise HeadlineError(f"{path}: no generated block (" + ", ".join(b.markers()[0] for b in BLOCKS) + ")")
    return [f"{path}: the {b.name} block differs from {metrics_dir}/; rewrite it with "
            f"`python -m tasks.report.headline {b.option} {path}`"
            for b, body in found if body is not None and body != b.body(metrics_dir)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tasks.report.headline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", type=Path, default=METRICS_DIR, metavar="DIR",
                    help="the folder of the run's metrics files")
    ap.add_argument("--readme", type=Path, metavar="FILE", help="rewrite this file's headline block")
    ap.add_argument("--results", type=Path, metavar="FILE", help="rewrite this file's current-figures block")
    ap.add_argument("--check", type=Path, metavar="FILE",
                    help="exit 1 if a generated block of this file differs from the metrics")
    args = ap.parse_args(argv)
    try:
        if args.check:
            stale = stale_blocks(args.check, args.metrics)
            print("\n".join(stale) or f"{args.check}: generated blocks match {args.metrics}/",
                  file=sys.stderr if stale else sys.stdout)
            return 1 if stale else 0
        writes = [(args.readme, BLOCKS[0]), (args.results, BLOCKS[1])]
        for path, block in writes:
            if path:
                print(write_block(path, block, args.metrics))
        if not any(path for path, _ in writes):
            print(render_terminal(load_headline(args.metrics)))
    except HeadlineError as e:
        print(f"headline: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
