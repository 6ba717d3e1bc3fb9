"""The label stage's skip counter (onegen_core.prepare.skips): reasons fold ids and numbers, counts per
task feed the report and the skip-rate gate, the first messages are listed in full."""
from __future__ import annotations

import logging

from onegen_core.prepare.skips import MAX_LISTED_SKIPS, Skips, skip_reason


def test_reasons_fold_quoted_names_and_numbers_but_keep_field_names():
    assert skip_reason("field 'steps[0].doc_title': 'No Such Paragraph' names no paragraph of record '5a8b'") == \
        "field steps[…].doc_title: … names no paragraph of record …"
    assert skip_reason('expected "x" 12 times') == "expected … … times"
    assert skip_reason("a" * 100) == "a" * 80


def test_counts_per_task_and_reason_most_common_first(caplog):
    skips = Skips()
    with caplog.at_level(logging.WARNING, logger="onegen.label"):
        skips.add("multihop", "d.jsonl:3", "duplicate decomposition of 'a'")
        skips.add("selfrag", "record 'r1'", "field 'output': missing required field")
        skips.add("multihop", "d.jsonl:9", "duplicate decomposition of 'b'")
    assert skips.count("multihop") == 2 and skips.count("selfrag") == 1 and skips.count("entity_linking") == 0
    assert skips.first("selfrag") == "[selfrag] record 'r1': field 'output': missing required field"
    assert skips.first("entity_linking") is None
    assert skips.to_dict() == {"multihop": {"duplicate decomposition of …": 2},
                               "selfrag": {"field output: missing required field": 1}}
    assert [r.name for r in caplog.records] == ["onegen.label"] * 3
    assert caplog.records[0].getMessage() == "skipped: [multihop] d.jsonl:3: duplicate decomposition of 'a'"


def test_only_the_first_skips_are_listed_but_all_are_counted():
    skips = Skips()
    for i in range(MAX_LISTED_SKIPS + 5):
        skips.add("entity_linking", f"article {i}", "no window")
    assert skips.count("entity_linking") == MAX_LISTED_SKIPS + 5
    assert len(skips.listed) == MAX_LISTED_SKIPS and skips.listed[0] == "[entity_linking] article 0: no window"
