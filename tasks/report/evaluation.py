"""The evaluation report: a markdown table per task, bar plots, and the one-paragraph headline that
`make run` / `onegen repro` end with."""
from __future__ import annotations

from pathlib import Path

SYSTEM_NAMES = {
    "onegen": "OneGen (one pass: [RQ] hidden state retrieves)",
    "minilm": "pipeline: same generator + MiniLM retriever",
    "bm25": "same generator + BM25",
    "sft": "SFT-only generator (λr = 0) + MiniLM retriever",
}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def hop_table(result: dict) -> list[str]:
    """Recall@1 of the k-th retrieval, per system: where a retriever loses (the first hop reads only the
    question; later ones read pasted passages as well)."""
    rows = [(ds, setting, name, a["recall_at_1_by_hop"]) for ds, settings in result.get("multihop", {}).items()
            for setting, systems in settings.items() for name, a in systems.items() if "recall_at_1_by_hop" in a]
    if not rows:
        return []
    hops = max(len(r[3]) for r in rows)
    lines = ["| dataset | setting | system | " + " | ".join(f"R@1 hop {k}" for k in range(1, hops + 1)) + " |",
             "|---|---|---|" + "---:|" * hops]
    for ds, setting, name, by_hop in rows:
        cells = [_pct(by_hop[str(k)]) if str(k) in by_hop else "-" for k in range(1, hops + 1)]
        lines.append(f"| {ds} | {setting} | {name} | " + " | ".join(cells) + " |")
    return lines


def multihop_table(result: dict) -> list[str]:
    lines = ["| dataset | setting | system | questions | EM | F1 | R@1 sub-query | R@1 question | unit R@1 | misses (by reason) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for ds, settings in result.get("multihop", {}).items():
        for setting, systems in settings.items():
            for name, a in systems.items():
                reasons = ", ".join(f"{k} {v}" for k, v in a["misses_by_reason"].items()) or "-"
                lines.append(f"| {ds} | {setting} | {name} | {a['questions']} | {_pct(a['em'])} | {_pct(a['f1'])} | "
                             f"{_pct(a['recall_at_1_subquery'])} | {_pct(a['recall_at_1_question'])} | "
                             f"{_pct(a['unit_recall_at_1'])} | {a['misses']} ({reasons}) |")
    return lines


def _linking_pass_line(el: dict) -> list[str]:
    lp = el.get("linking_pass")  # absent from metrics written before it was recorded
    if not lp or lp.get("forward_passes") is None:
        return []
    fed, kept = lp.get("draft_tokens_fed") or 0, lp.get("draft_tokens_kept") or 0
    copy = f"; speculative copy kept {kept:,} of {fed:,} guessed tokens" if fed else ""
    return [f"Linking (MD+EL): {lp['forward_passes']:,} forward passes, {lp['searches']:,} searches in "
            f"{lp['seconds']} s{copy}."]


def el_table(result: dict) -> list[str]:
    el = result.get("entity_linking") or {}
    if not el:
        return ["(no entity-linking benchmark evaluated)"]
    kb = (f"a KB of {el['kb_entities']:,} entities ({el.get('kb_pages', 0):,} of them pages no benchmark names); "
          if "kb_entities" in el else "")  # absent from metrics written before 2026-12-07
    lines = [f"{el['articles']} articles in {el['windows']} windows, {el['gold_mentions']} InKB gold mentions; {kb}"
             f"windows by finish reason: {el['windows_by_finish_reason']}; ED mentions cut by max length: "
             f"{el['ed_mentions_truncated']}.", *_linking_pass_line(el), "",
             "| benchmark | system | task | P | R | F1 | tp | fp | fn |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, buckets in el["systems"].items():
        for bucket, tasks_ in sorted(buckets.items(), key=lambda kv: (kv[0] != "all", kv[0])):
            for t, s in tasks_.items():
                lines.append(f"| {bucket} | {name} | {t.upper()} | {_pct(s['precision'])} | {_pct(s['recall'])} | "
                             f"{_pct(s['f1'])} | {s['tp']} | {s['fp']} | {s['fn']} |")
    return lines + _nil_lines(el)


def _nil_lines(el: dict) -> list[str]:
    """OneGen's end-to-end links with NIL abstention (the served model's setting) beside the table."""
    nil = el.get("nil_abstention")  # absent from metrics written before 2026-12-08
    if not nil:
        return []
    if nil.get("threshold") is None:
        return ["", f"NIL abstention not scored: {nil.get('source')}."]
    lines = ["", (f"With NIL abstention as `onegen link` applies it (below {nil['threshold']:.3f}, chosen on validation "
                  f"windows: {nil['source']}), {nil['abstained']:,} of {nil['linked_without']:,} end-to-end links "
                  "become NIL:"), "", "| benchmark | system | task | P | R | F1 | tp | fp | fn |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for bucket, s in sorted(nil["el"].items(), key=lambda kv: (kv[0] != "all", kv[0])):
        lines.append(f"| {bucket} | onegen + NIL | EL | {_pct(s['precision'])} | {_pct(s['recall'])} | {_pct(s['f1'])} | "
                     f"{s['tp']} | {s['fp']} | {s['fn']} |")
    return lines


def elevant_table(result: dict) -> list[str]:
    rules = (result.get("entity_linking") or {}).get("elevant_rules") or {}
    if not rules:
        return []
    lines = ["| benchmark | task | P | R | F1 | tp | fp | fn |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for bucket, tasks_ in sorted(rules.items(), key=lambda kv: (kv[0] != "all", kv[0])):
        for t, s in tasks_.items():
            name = {"ner": "NER (MD)", "el": "EL (all)", "ed": "ED (all, gold mentions)"}[t]
            lines.append(f"| {bucket} | {name} | {_pct(s['precision'])} | {_pct(s['recall'])} | {_pct(s['f1'])} | "
                         f"{s['tp']} | {s['fp']} | {s['fn']} |")
    return lines


def plot(result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    groups = [(ds, setting, systems) for ds, settings in result.get("multihop", {}).items()
              for setting, systems in settings.items()]
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
        metrics = [("em", "EM"), ("f1", "F1"), ("recall_at_1_subquery", "R@1 sub-q"), ("recall_at_1_question", "R@1 q")]
        for ax, (ds, setting, systems) in zip(axes[0], groups):
            names = list(systems)
            width = 0.8 / max(1, len(names))
            for j, name in enumerate(names):
                xs = [i + j * width for i in range(len(metrics))]
                ax.bar(xs, [100 * systems[name][m] for m, _ in metrics], width, label=name)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))], [lbl for _, lbl in metrics], fontsize=8)
            ax.set_title(f"{ds} ({setting})", fontsize=9)
            ax.set_ylim(0, 100)
        axes[0][0].set_ylabel("%")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "multihop.png", dpi=110)
        plt.close(fig)
        files.append("multihop.png")
    el = (result.get("entity_linking") or {}).get("systems", {})
    if el:
        bars = [(f"{name}\n{t.upper()}", s["f1"]) for name, b in el.items() for t, s in b.get("all", {}).items()]
        fig, ax = plt.subplots(figsize=(1.1 * len(bars) + 2, 3.2))
        ax.bar(range(len(bars)), [100 * v for _, v in bars])
        ax.set_xticks(range(len(bars)), [n for n, _ in bars], fontsize=8)
        ax.set_ylabel("InKB micro F1 (%)")
        ax.set_title("entity linking, all held-out benchmarks", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "entity_linking.png", dpi=110)
        plt.close(fig)
        files.append("entity_linking.png")
    return files


def write_report(result: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    images = plot(result, out)
    lines = [f"# Evaluation of `{result['checkpoint']}` (checkpoint {result['checkpoint_id']})", "",
             "Systems: " + "; ".join(f"**{k}** = {v}" for k, v in SYSTEM_NAMES.items()), "",
             "**The same rules for every system.** Each baseline retriever is given what OneGen's [RQ] has read "
             "at that point: the question plus everything pasted or generated since (implicit query style), or "
             "the sub-question written since the last passage (explicit style); MiniLM, limited to 256 "
             "word-pieces, keeps the question and the most recent text. Each unit is scored on what OneGen's "
             "[RD] of it read (`evaluate.baseline_unit_text`: the title and its paragraph up to the end of the "
             "sentence). The baselines share OneGen's generator (App. G.2 pairs them with an SFT-only one: the "
             "`sft` system, when `evaluate.sft_checkpoint` names such a checkpoint). A passage already pasted into "
             "a sequence is not retrieved again, by any system. Positives follow the paper (App. G.1): every "
             "sentence of a gold paragraph at or after its first supporting sentence; unit R@1 and "
             "training's teacher-forced Recall@k use the same definition.", "",
             "## Multi-hop QA", "",
             "EM/F1: official HotpotQA normalisation; a miss (no closed final answer, retrieval cap, nothing "
             "retrievable) scores 0 and stays in the denominator. R@1 sub-query: top-1 passage is a gold "
             "paragraph not hit before (per max(emitted, gold) hops); R@1 question: every hop hit a distinct "
             "gold paragraph and all were hit.", ""]
    lines += multihop_table(result)
    hops = hop_table(result)
    if hops:
        lines += ["", "Recall@1 by hop: the k-th retrieval hit a gold paragraph not hit before, over the questions "
                  "with at least k gold paragraphs (a question that stopped retrieving misses the hop).", ""] + hops
    lines += ["", "## Entity linking", "", "### Exact-span strong matching (InKB micro)", "",
              "A prediction counts only with the exact gold span (and entity); labels ELEVANT marks optional "
              "or coreference are not required.", ""] + el_table(result) + [""]
    ev = elevant_table(result)
    if ev:
        lines += ["### ELEVANT's rules (InKB mode, as its evaluate.py scores the exported files)", "",
                  "Spans widened to word boundaries before matching; a mention that linked nothing is exported as "
                  "`<NIL>` (no false positive off gold spans); coreference inferred from the mention text and "
                  "left out of NER; optional labels only add false positives.", ""] + ev + [""]
    lines += [f"![{img}]({img})" for img in images]
    lines += ["", f"Predictions: `predictions/*.jsonl` (multi-hop), `elevant/*.linked_articles.jsonl` (ELEVANT). "
              f"Took {result.get('seconds', 0):.0f} s.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def headline_table(result: dict) -> str:
    """The table `make run` ends with: every system on every multi-hop setting, then entity linking."""
    rows = ["| dataset / setting | system | EM | F1 | R@1 sub-query | R@1 question | misses |", "|---|---|---:|---:|---:|---:|---:|"]
    for ds, settings in result.get("multihop", {}).items():
        for setting, systems in settings.items():
            for name, a in systems.items():
                rows.append(f"| {ds} / {setting} | {name} | {_pct(a['em'])} | {_pct(a['f1'])} | "
                            f"{_pct(a['recall_at_1_subquery'])} | {_pct(a['recall_at_1_question'])} | {a['misses']} |")
    el = (result.get("entity_linking") or {})
    systems = el.get("systems", {})
    if systems:
        rows += ["", "| entity linking (all held-out) | MD F1 | ED F1 | EL F1 |", "|---|---:|---:|---:|"]
        for name, b in systems.items():
            s = b.get("all", {})
            cell = lambda k: _pct(s[k]["f1"]) if k in s else "-"  # noqa: E731
            rows.append(f"| {name} (exact spans) | {cell('md')} | {cell('ed')} | {cell('el')} |")
        ev = (el.get("elevant_rules") or {}).get("all")
        if ev:
            rows.append(f"| onegen (ELEVANT rules) | {_pct(ev['ner']['f1'])} | {_pct(ev['ed']['f1'])} | "
                        f"{_pct(ev['el']['f1'])} |")
    return "\n".join(rows)


def headline(result: dict) -> str:
    parts = []
    for ds, settings in result.get("multihop", {}).items():
        for setting, systems in settings.items():
            a = systems.get("onegen")
            if a:
                parts.append(f"{ds}/{setting}: EM {_pct(a['em'])} F1 {_pct(a['f1'])} R@1 sub-query "
                             f"{_pct(a['recall_at_1_subquery'])} question {_pct(a['recall_at_1_question'])}")
    el = (result.get("entity_linking") or {}).get("systems", {}).get("onegen", {}).get("all")
    if el:
        parts.append(f"EL F1 {_pct(el['el']['f1'])} (MD {_pct(el['md']['f1'])}, ED {_pct(el['ed']['f1'])})")
    return "evaluate: " + "; ".join(parts)
