"""The single error type raised by the data loaders.

Why one type with structured attributes: a bad record in a 100k-record file is only fixable if the
message says exactly where it is, and callers (skip/report modes, tests) need to inspect the location
without parsing the message.
"""
from __future__ import annotations

__all__ = ["DataError", "FILE_RECORD"]

#: ``record`` value used for errors that concern the whole file (invalid JSON array, bad encoding...).
FILE_RECORD = "<file>"


class DataError(ValueError):
    """A malformed data file or record, located by file, record and field.

    ``str(e)`` is ``"{file}: record {record}: field '{field}': {message}"``.
    """

    def __init__(self, file: str, record: str, field: str, message: str) -> None:
        self.file = file
        self.record = record
        self.field = field
        self.message = message
        super().__init__(f"{file}: record {record}: field '{field}': {message}")

    def __reduce__(self):  # keep the error picklable (e.g. across DataLoader worker processes)
        return (type(self), (self.file, self.record, self.field, self.message))
