"""The strict-JSON kit every loader of `onegen_core.data` shares: located errors, JSON-typed field access,
and the read → decode → collect loop over a JSON array or JSON Lines file.

Every error is a :class:`DataError` naming the file, the record (its id, or its position) and the field;
a loader either raises the first one or collects one per skipped record (``on_error="skip"``).
"""
from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal, TextIO

from .errors import FILE_RECORD, DataError
from .open_source import open_text, source_name

OnError = Literal["raise", "skip"]

# Pseudo field names for errors that are not about one JSON field.
FIELD_ROOT = "<root>"
FIELD_JSON = "<json>"
FIELD_ENCODING = "<encoding>"
FIELD_COMPRESSION = "<compression>"

# A lone UTF-16 surrogate: JSON can spell one ("\\ud800"), Python keeps it in a str, and no UTF-8 writer
# can encode it, so it would crash whichever stage writes the record next.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Where:
    """The file and record being validated, to build located errors."""

    file: str
    record: str

    def error(self, field: str, message: str) -> DataError:
        return DataError(self.file, self.record, field, message)


JSON_NAMES: dict[type, str] = {str: "string", int: "integer", list: "array", dict: "object"}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, float):
        return "number"
    for python_type, name in JSON_NAMES.items():
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def typed(value: Any, expected: type, field: str, where: Where) -> Any:
    """Return ``value`` if it has the expected JSON type (booleans are never integers); a string must
    also be encodable text (no lone surrogate)."""
    if isinstance(value, bool) or not isinstance(value, expected):
        raise where.error(field, f"expected {JSON_NAMES[expected]}, got {json_type(value)}")
    if expected is str:
        check_text(value, field, where)
    return value


def check_text(value: str, field: str, where: Where) -> str:
    """``value`` unless it holds a lone surrogate, which no UTF-8 file can store."""
    bad = _LONE_SURROGATE.search(value)
    if bad:
        raise where.error(field, f"lone surrogate U+{ord(bad.group()):04X} at char {bad.start()}: not encodable text")
    return value


def required(raw: dict, key: str, where: Where) -> Any:
    """The value of a required field."""
    if key not in raw:
        raise where.error(key, "missing required field")
    return raw[key]


def required_text(raw: dict, key: str, where: Where) -> str:
    """A required, non-blank string field."""
    value = typed(required(raw, key, where), str, key, where)
    if not value.strip():
        raise where.error(key, "must not be empty")
    return value


def fixed_list(value: Any, length: int, field: str, where: Where) -> list:
    """An array with exactly ``length`` items (pairs, triples)."""
    typed(value, list, field, where)
    if len(value) != length:
        raise where.error(field, f"expected an array of {length} items, got {len(value)}")
    return value



@dataclass(frozen=True)
class Raw:
    """One undecoded record: its position label, its JSON value, or the error that replaced it."""

    position: str  # "#<index>" (array) or "line <n>" (JSONL)
    value: Any = None
    error: DataError | None = None


def head_lines(stream: TextIO) -> list[str]:
    """Read lines up to and including the first one with content (to detect the format)."""
    lines = []
    for line in stream:
        lines.append(line)
        if line.strip():
            break
    return lines


_TOO_DEEP = "JSON nested too deeply to read"


def iter_array(file: str, text: str) -> Iterator[Raw]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            file, FILE_RECORD, FIELD_JSON,
            f"invalid JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}",
        ) from None
    except RecursionError:
        raise DataError(file, FILE_RECORD, FIELD_JSON, _TOO_DEEP) from None
    if not isinstance(data, list):
        raise DataError(file, FILE_RECORD, FIELD_ROOT, f"expected a JSON array, got {json_type(data)}")
    for index, value in enumerate(data):
        yield Raw(f"#{index}", value)


def iter_jsonl(file: str, lines: Iterable[str]) -> Iterator[Raw]:
    """One record per non-blank line; a line that is not JSON becomes a per-record error."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        position = f"line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            message = f"invalid JSON at column {exc.colno}: {exc.msg}"
            yield Raw(position, error=DataError(file, position, FIELD_JSON, message))
            continue
        except RecursionError:
            yield Raw(position, error=DataError(file, position, FIELD_JSON, _TOO_DEEP))
            continue
        yield Raw(position, value)


def iter_raw(file: str, stream: TextIO) -> Iterator[Raw]:
    """Detect JSON array vs JSON Lines by the first non-whitespace character and iterate records."""
    head = head_lines(stream)
    if not head or not head[-1].strip():
        raise DataError(file, FILE_RECORD, FIELD_ROOT, "file is empty: expected a JSON array or JSON Lines")
    first = head[-1].lstrip()[0]
    if first == "[":
        yield from iter_array(file, "".join(head) + stream.read())
    elif first == "{":
        yield from iter_jsonl(file, chain(head, stream))
    else:
        raise DataError(
            file, FILE_RECORD, FIELD_ROOT,
            f"expected a JSON array ('[') or JSON Lines objects ('{{'), file starts with {first!r}",
        )


def collect_records(
    path: str | os.PathLike,
    iter_raw: Callable[[str, TextIO], Iterable[Raw]],
    decode: Callable[[str, Raw], Any],
    raise_errors: bool,
) -> tuple[list, list[DataError]]:
    """The loop every strict loader shares: decode each raw record, raise the first error or collect
    one error per excluded record; a file that is not UTF-8 always raises."""
    file = source_name(path)
    items: list = []
    errors: list[DataError] = []
    last = "the start"
    with open_text(path) as stream:
        try:
            for raw in iter_raw(file, stream):
                last = raw.position
                try:
                    items.append(decode(file, raw))
                except DataError as exc:
                    if raise_errors:
                        raise
                    errors.append(exc)
        except UnicodeDecodeError as exc:
            raise DataError(file, FILE_RECORD, FIELD_ENCODING, f"not valid UTF-8 after {last}: {exc}") from None
        except (EOFError, zlib.error, OSError) as exc:  # gzip.BadGzipFile is an OSError
            raise DataError(file, FILE_RECORD, FIELD_COMPRESSION,
                            f"truncated or corrupt file after {last}: {type(exc).__name__}: {exc}") from None
    return items, errors


def check_on_error(on_error: str) -> bool:
    """Validate the policy; return whether errors must be raised."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error == "raise"


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """The strict JSON Lines reader: `(line number, value)` for every non-blank line of a local file, in
    order. Bytes that are not UTF-8 (a byte-order mark on the first line is allowed), a line that is not
    JSON and JSON nested too deeply to read are `DataError`s naming the file and the line, raised at the
    line where they occur (what came before has been yielded). The `UnicodeDecodeError` or
    `json.JSONDecodeError` an error replaces stays its `__context__` (hidden from tracebacks), for a caller
    that words the error its own way. What a value must hold is the caller's check: it raises its own
    `DataError` with the same file and `f"line {n}"`."""
    file = source_name(path)
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            position = f"line {number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(file, position, FIELD_ENCODING, f"not valid UTF-8: {exc}") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(file, position, FIELD_JSON, f"invalid JSON at column {exc.colno}: {exc.msg}") from None
            except RecursionError:
                raise DataError(file, position, FIELD_JSON, _TOO_DEEP) from None
            yield number, value
