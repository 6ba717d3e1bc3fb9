"""Stage `link_threshold`: the NIL threshold of entity linking, chosen on validation windows.

The validation windows are the entity-linking examples the label stage held out (`label.out_dir`/val.jsonl,
ids `{benchmark}/{article}@{offset}`), rebuilt from their training-benchmark articles as the label stage
cut them (`text_windows` around the linkable mentions of the KB). Each is linked end to end by the trained
checkpoint against the entity table (`link_windows`, as the evaluate stage links held-out articles); the
threshold is the one whose abstention gives the best EL micro-F1 on them
(`onegen_core.evaluation.nil_threshold`). No held-out article is read.

Writes `serve.link_threshold_path` (metrics/link_threshold.json): the threshold, the validation F1 with
and without it, the curve, and the checkpoint it was chosen for. `onegen link` and `onegen api` abstain
with it when `serve.link_nil` is `auto` and the checkpoint matches.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from tqdm import tqdm

from onegen_core.config import BackboneConfig, Params
from onegen_core.data.elevant import ElevantArticle, load_elevant
from onegen_core.data.kb import load_kb
from onegen_core.evaluation.linking import Window, article_key, link_windows
from onegen_core.evaluation.nil_threshold import choose_threshold
from onegen_core.inference.index import check_checkpoint
from onegen_core.method.backbone import checkpoint_id, load_pretrained
from onegen_core.method.precision import resolve_inference_dtype
from onegen_core.prepare.data_text import escape_data_text
from onegen_core.prepare.labelling import text_windows
from tasks.stage_common import stage_params, write_json

log = logging.getLogger("onegen.link_threshold")


def validation_windows(p: Params) -> tuple[list[ElevantArticle], list[Window]]:
    """(one article per validation window, limited to that window by its evaluation span; the windows)."""
    val_ids = []
    with open(Path(p.label.out_dir) / "val.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("task") == "entity_linking":
                val_ids.append(rec["id"])
    if not val_ids:
        return [], []
    kb = {e.id for e in load_kb(str(Path(p.prepare.out_dir) / "kb.jsonl"))}
    split = json.loads((Path(p.prepare.out_dir) / "el_split.json").read_text())
    trained = set(split["benchmarks"]["train"])
    by_key: dict[str, ElevantArticle] = {}
    for path in p.prepare.elevant:
        for a in load_elevant(path):
            if a.benchmark in trained:
                by_key[article_key(a)] = a
    articles, windows = [], []
    for vid in val_ids:
        key, _, off = vid.rpartition("@")
        a = by_key.get(key)
        if a is None:
            raise ValueError(f"{p.label.out_dir}/val.jsonl: example {vid!r}: article {key!r} is in no training "
                             f"benchmark of prepare.elevant")
        usable = [lb.span for lb in a.top_level_labels() if lb.is_linkable and lb.entity_id in kb]
        cut = dict(text_windows(a.text, usable, p.label.el_max_chars))  # as the label stage cut it
        start = int(off)
        if start not in cut:
            raise ValueError(f"{p.label.out_dir}/val.jsonl: example {vid!r}: no window starts at {start} "
                             f"(label.el_max_chars changed since the label stage ran?)")
        sub = dataclasses.replace(a, id=f"{a.id}@{start}", evaluation_span=(start, cut[start]))
        articles.append(sub)
        windows.append(Window(f"{article_key(sub)}@{start}", article_key(sub), start,
                              escape_data_text(a.text[start:cut[start]])))  # as `windows_of` escapes
    return articles, windows


def run(p: Params) -> dict:
    from tasks.adapters.lance_index import LanceIndex

    t0 = time.perf_counter()
    cfg = p.evaluate
    articles, windows = validation_windows(p)
    if not windows:
        # entity linking was left out (prepare.elevant empty, or no validation share): nothing to choose on.
        # The record says so; `onegen link` and the evaluate stage then never abstain, and report why.
        why = (f"{p.label.out_dir}/val.jsonl holds no entity-linking example: no validation windows to choose the "
               "NIL threshold on (prepare.elevant, label.val_count_by_task)")
        log.warning("no NIL threshold: %s", why)
        report = {"checkpoint_id": checkpoint_id(cfg.checkpoint), "threshold": None, "windows": 0, "reason": why,
                  "seconds": round(time.perf_counter() - t0, 1)}
        write_json(p.serve.link_threshold_path, report)
        return report
    dtype = resolve_inference_dtype(p.backbone.inference_dtype)
    lm, tok, _ = load_pretrained(cfg.checkpoint, BackboneConfig(name=cfg.checkpoint, dtype=dtype))
    lm.eval()
    ck = checkpoint_id(cfg.checkpoint)
    kb = LanceIndex(cfg.index_uri, cfg.kb_table)
    check_checkpoint(kb, ck)
    log.info("linking %d validation windows of %d articles", len(windows), len({w.article.rpartition("@")[0]
                                                                                for w in windows}))
    bar = tqdm(total=len(windows), desc="link validation windows", unit="window")
    preds, finish = link_windows(lm, tok, windows, kb, cfg.el_max_retrievals, cfg.el_batch_size, ck,
                                 on_batch=bar.update)
    bar.close()
    chosen = choose_threshold(articles, preds)
    report = {"checkpoint_id": ck, "threshold": chosen["threshold"], "chosen_on": "validation windows (label val.jsonl)",
              "windows": len(windows), "finish": dict(finish), **{k: v for k, v in chosen.items() if k != "threshold"},
              "seconds": round(time.perf_counter() - t0, 1)}
    write_json(p.serve.link_threshold_path, report)
    log.info("NIL threshold %s: validation EL F1 %.3f -> %.3f (%d of %d links abstained)", chosen["threshold"],
             chosen["f1_without"], chosen["f1"], chosen["abstained"], chosen["linked"])
    return report


def main(argv: list[str] | None = None) -> None:
    run(stage_params(__doc__, argv))


if __name__ == "__main__":
    main()
