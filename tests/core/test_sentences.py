import pytest

from onegen_core.prepare.sentences import split_sentences


@pytest.mark.parametrize(
    "text, expected",
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Born in 1950. He died in 2001.", ["Born in 1950.", "He died in 2001."]),
        ("J. R. R. Tolkien wrote it. Mr. Smith read it.", ["J. R. R. Tolkien wrote it.", "Mr. Smith read it."]),
        ("Version 2.5 is out. Yes.", ["Version 2.5 is out.", "Yes."]),
        ("  ", []),
        ("no end", ["no end"]),
    ],
)
def test_split(text, expected):
    assert split_sentences(text) == expected
