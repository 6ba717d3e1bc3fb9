"""The README is a door that cannot drift from the run it describes.

- It opens with the two commands and documents the fast subset beside them.
- Its headline block, and the current figures of docs/RESULTS.md, are exactly what `tasks.report.headline`
  renders from the committed `metrics/`.
- Each claim its prose makes about those figures still holds on `metrics/evaluate.json`. When a new run
  breaks one, this test names it: rewrite the README's sentence, do not loosen the test.
- Every relative link of the README, the results page and the per-day history resolves.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasks.report import headline as hl

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "RESULTS.md"
METRICS = ROOT / "metrics"
FAST_SUBSET = '.venv/bin/python -m pytest -q -m "not slow"'


def test_readme_opens_with_the_two_commands_and_the_fast_subset():
    top = README.read_text(encoding="utf-8").splitlines()[:10]
    assert top[0] == "# onegen"
    fence = [i for i, line in enumerate(top) if line.startswith("```")][:2]
    block = [line.split("#")[0].strip() for line in top[fence[0] + 1:fence[1]] if line.strip()]
    assert block == ["make run", "make test"]  # the first code block: exactly the main job and the tests
    assert "fast subset" in next(line for line in top[fence[1]:] if f"`{FAST_SUBSET}`" in line)


@pytest.mark.parametrize("doc, block", [(README, "headline"), (RESULTS, "results")])
def test_generated_blocks_equal_what_the_committed_metrics_give(doc, block):
    text = doc.read_text(encoding="utf-8")
    assert hl.block_text(text, next(b for b in hl.BLOCKS if b.name == block)) is not None, f"{doc}: no {block} block"
    assert hl.stale_blocks(doc, METRICS) == []


def question_counts(a: dict) -> tuple[int, int]:
    """(questions answered exactly, questions) of one system on one setting."""
    return round(a["em"] * a["questions"]), a["questions"]


def test_the_readme_prose_holds_on_the_committed_metrics():
    ev = json.loads((METRICS / "evaluate.json").read_text())
    mh = ev["multihop"]
    r1 = lambda ds, st, s: mh[ds][st][s]["recall_at_1_subquery"]  # noqa: E731
    sets = [(ds, st) for ds in ("hotpotqa", "2wiki") for st in ("distractor", "open")]
    # Retrieval: on HotpotQA MiniLM ahead of OneGen in both settings; OneGen ahead of BM25 (distractor), behind (open)
    for st in ("distractor", "open"):
        assert r1("hotpotqa", st, "minilm") > r1("hotpotqa", st, "onegen")
    assert r1("hotpotqa", "distractor", "onegen") > r1("hotpotqa", "distractor", "bm25")
    assert r1("hotpotqa", "open", "onegen") < r1("hotpotqa", "open", "bm25")
    # 2Wiki: level with BM25 and ahead of MiniLM (distractor), ahead of both (open); 10 questions
    assert r1("2wiki", "distractor", "onegen") == pytest.approx(r1("2wiki", "distractor", "bm25"))
    assert r1("2wiki", "distractor", "onegen") > r1("2wiki", "distractor", "minilm")
    assert r1("2wiki", "open", "onegen") > max(r1("2wiki", "open", "minilm"), r1("2wiki", "open", "bm25"))
    assert mh["2wiki"]["distractor"]["onegen"]["questions"] == 10
    # Answers: BM25 ahead on F1 everywhere, on EM everywhere but 2Wiki open, where all three score 0
    for ds, st in sets:
        one, bm25 = mh[ds][st]["onegen"], mh[ds][st]["bm25"]
        assert bm25["f1"] > one["f1"], (ds, st)
        if (ds, st) == ("2wiki", "open"):
            assert one["em"] == bm25["em"] == mh[ds][st]["minilm"]["em"] == 0
        else:
            assert bm25["em"] > one["em"], (ds, st)
    # Against MiniLM on HotpotQA: one question more in the open setting (3 vs 2 of 50), one fewer in the
    # distractor one (4 vs 5); F1 below MiniLM's everywhere but HotpotQA open
    assert question_counts(mh["hotpotqa"]["open"]["onegen"]) == (3, 50)
    assert question_counts(mh["hotpotqa"]["open"]["minilm"]) == (2, 50)
    assert question_counts(mh["hotpotqa"]["distractor"]["onegen"]) == (4, 50)
    assert question_counts(mh["hotpotqa"]["distractor"]["minilm"]) == (5, 50)
    for ds, st in sets:
        one, mini = mh[ds][st]["onegen"]["f1"], mh[ds][st]["minilm"]["f1"]
        assert (one > mini) == ((ds, st) == ("hotpotqa", "open")), (ds, st)
    # Entity disambiguation behind both mention-text baselines
    ed = {s: b["all"]["ed"]["f1"] for s, b in ev["entity_linking"]["systems"].items()}
    assert ed["onegen"] < min(ed["minilm"], ed["bm25"])


def relative_links(doc: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"^([a-z]+:|#)", t)]


@pytest.mark.parametrize("doc", [README, RESULTS, *sorted((ROOT / "docs" / "results").glob("*.md"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    links = relative_links(doc)
    assert links or doc != README
    assert [t for t in links if not (doc.parent / t).exists()] == []
