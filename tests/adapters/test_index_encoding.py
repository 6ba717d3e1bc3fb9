"""The shared resumable encoder's result (tasks.adapters.index_encoding): its report entry keeps the keys,
values and order the encode report always had (`metrics/encode.json`). `encode_table` itself runs in
tests/stages/test_corpus_encode.py and tests/serving/test_cli_ask.py (a model and a LanceDB table)."""
from __future__ import annotations

import pytest

pytest.importorskip("lancedb")


def test_the_report_entry_keeps_its_keys_in_order():
    from tasks.adapters.index_encoding import EncodedTable

    entry = EncodedTable(table="units", documents=3, documents_encoded_now=2, units_in_index=7, units_truncated=1,
                         documents_truncated=1, ann_index=False).to_dict()
    assert list(entry.items()) == [("table", "units"), ("documents", 3), ("documents_encoded_now", 2),
                                   ("units_in_index", 7), ("units_truncated", 1), ("documents_truncated", 1),
                                   ("ann_index", False)]
