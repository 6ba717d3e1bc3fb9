"""Baselines on equal footing with OneGen (issue 35, part 3): a unit's baseline text is what its [RD] read,
a long query keeps the question and the most recent text, and recall is reported per hop."""
from __future__ import annotations

import pytest

from onegen_core.data.multihop import Paragraph
from onegen_core.evaluation.multihop import pipeline_query_parts, pipeline_query_text, recall_by_hop
from onegen_core.inference.document_encoding import rd_read_texts, unit_records
from onegen_core.prepare.multihop import paragraph_document
from tasks.adapters.baselines import BM25Index, MiniLMEncoder, baseline_unit_parts, joined


def tower_records():
    """Two paragraphs at sentence granularity, exactly as `encode` stores them."""
    tower = Paragraph("Eiffel Tower", ("The tower stands in Paris.", " It was finished in 1889.", " It is 330 m tall."))
    bridge = Paragraph("Golden Gate", ("The bridge spans a strait.", " It opened in 1937."))
    return [r for p in (tower, bridge) for r in unit_records(paragraph_document(p, "sentence"))]


def test_a_sentence_units_text_is_what_its_rd_read():
    records = tower_records()
    assert rd_read_texts(records) == [
        "Eiffel Tower: The tower stands in Paris.",
        "Eiffel Tower: The tower stands in Paris. It was finished in 1889.",
        "Eiffel Tower: The tower stands in Paris. It was finished in 1889. It is 330 m tall.",
        "Golden Gate: The bridge spans a strait.",
        "Golden Gate: The bridge spans a strait. It opened in 1937.",
    ]
    shuffled = [records[i] for i in (4, 2, 0, 3, 1)]  # order in the table does not matter, unit ids do
    assert rd_read_texts(shuffled) == [rd_read_texts(records)[i] for i in (4, 2, 0, 3, 1)]


def test_the_two_unit_text_forms():
    records = tower_records()
    assert baseline_unit_parts(records)[1] == ("Eiffel Tower:", "The tower stands in Paris. It was finished in 1889.")
    assert baseline_unit_parts(records, "unit")[1] == ("Eiffel Tower:", "It was finished in 1889.")
    assert joined(baseline_unit_parts(records, "unit"))[4] == "Golden Gate: It opened in 1937."
    with pytest.raises(ValueError, match="unknown baseline unit text 'title'"):
        baseline_unit_parts(records, "title")


def test_bm25_over_what_the_rd_read_finds_a_later_sentence_by_an_earlier_ones_words():
    records = tower_records()
    ids = lambda hits: {h.id for h in hits[0] if h.score > 0}  # noqa: E731  (every unit comes back, ranked)
    # "Paris" is only in the tower's first sentence: alone, the 1889 sentence cannot match it
    assert ids(BM25Index(records, "unit").search(["Paris"], k=5)) == {records[0].id}
    assert ids(BM25Index(records, "rd_context").search(["Paris"], k=5)) == {r.id for r in records[:3]}


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder(max_length=24)  # the real tokenizer and weights, a short limit to exercise the cut


def test_fit_keeps_the_question_and_the_most_recent_text(minilm):
    head = "Who directed Inception?"
    tail = " ".join(f"word{i}" for i in range(60)) + " Christopher Nolan directed it."
    fitted = minilm.fit(head, tail)
    assert fitted.startswith(head + " ") and fitted.endswith("Christopher Nolan directed it.")
    assert minilm._pieces(fitted) <= 22 < minilm._pieces(f"{head} {tail}")  # 24 less [CLS] and [SEP]
    assert "word0 " not in fitted  # the start of the pasted text went, not its end
    assert minilm.fit(head, "Nolan.") == f"{head} Nolan."  # short: untouched
    assert minilm.fit("", "a b c") == "a b c"
    long_head = " ".join(["question"] * 40)
    assert minilm.fit(long_head, "tail") == long_head  # a head past the limit alone: encode's cut applies


def test_the_query_a_baseline_reads_at_each_hop():
    continuation = "<paragraph>Inception: a 2010 film by Nolan.</paragraph> Who is Nolan? [RQ]"
    # implicit: the question, then everything pasted or written since (special tokens as spaces)
    assert pipeline_query_parts("Q?", continuation) == ("Q?", "Inception: a 2010 film by Nolan. Who is Nolan?")
    assert pipeline_query_parts("Q?", continuation, "explicit") == ("", "Who is Nolan?")
    assert pipeline_query_parts("Q?", "[RQ]", "explicit") == ("", "Q?")
    assert pipeline_query_text("Q?", "[RQ]") == "Q?"


def row(gold_hops: int, hits: list[bool]) -> dict:
    return {"gold_hops": gold_hops, "retrievals": [{"gold_doc": h} for h in hits]}


def test_recall_by_hop_counts_a_missing_retrieval_as_a_miss():
    rows = [row(2, [True, True]), row(2, [True]), row(2, [False, True]), row(4, [True, False, True])]
    assert recall_by_hop(rows) == {"1": 0.75, "2": 0.5, "3": 1.0, "4": 0.0}
    assert recall_by_hop([]) == {}
