"""A user's JSONL documents for `onegen index add` (tasks.serving.corpus.read_jsonl): read by the strict
JSONL reader, its errors worded as `onegen index add` has always printed them (`{path}:{line}: ...`)."""
from __future__ import annotations

import json
import re

import pytest

from tasks.serving.corpus import CorpusError, read_jsonl


def test_documents_in_file_order_with_sentence_units(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": " a ", "title": " T ", "text": "One. Two."}).encode()
                  + b"\n\n" + json.dumps({"id": "b", "text": "Three.", "extra": 1}).encode() + b"\n")
    docs = read_jsonl(f, "sentence")  # a byte-order mark on the first line is allowed
    assert [(d.id, d.title, d.units) for d in docs] == [("a", "T", ("One.", " Two.")), ("b", "", ("Three.",))]
    assert read_jsonl(f, "document")[0].units == ("One. Two.",)


@pytest.mark.parametrize("raw, message", [
    (b'{"id": "a", "text": "x"}\n{"id": "b", "text" 1}\n', "{f}:2: not JSON (Expecting ':' delimiter at column 20)"),
    (b'{"id": "a", "text": "x\xff"}\n', "{f}:1: not valid UTF-8: 'utf-8' codec can't decode byte 0xff in position 22: "
                                        "invalid start byte"),
    (b'[1]\n', "{f}:1: expected an object with id, title, text; got list"),
    (b'{"id": "a", "title": 3, "text": "x"}\n', "{f}:1: field 'title': expected a string, got int 3"),
    (b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "{f}:2: field 'id' 'a' repeats line 1"),
])
def test_errors_name_the_file_line_and_field(tmp_path, raw, message):
    f = tmp_path / "docs.jsonl"
    f.write_bytes(raw)
    with pytest.raises(CorpusError, match=f"^{re.escape(message.format(f=f))}$"):
        read_jsonl(f, "sentence")
