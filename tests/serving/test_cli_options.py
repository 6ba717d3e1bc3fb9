"""tasks/serving/cli.py: the options of `onegen ask|link|index|api`, registered by flows/cli.py."""
from __future__ import annotations

import argparse

import pytest


def parser() -> argparse.ArgumentParser:
    from tasks.serving.cli import add_commands

    ap = argparse.ArgumentParser(prog="onegen")
    add_commands(ap.add_subparsers(dest="command", required=True))
    return ap


def test_the_four_commands_with_their_defaults():
    from tasks.serving.cli import COMMANDS

    ap = parser()
    assert set(ap._subparsers._group_actions[0].choices) == set(COMMANDS) == {"ask", "link", "index", "api"}
    args = ap.parse_args(["ask", "why?"])
    assert vars(args) == {"command": "ask", "question": "why?", "file": None, "json": False, "max_tokens": None,
                          "max_retrievals": None, "top_k": None, "temperature": None, "seed": None,
                          "batch_size": None, "project_dir": ".", "profile": None, "set": [], "checkpoint": None,
                          "index": None}
    args = ap.parse_args(["index", "add", "docs/", "--granularity", "document", "-S", "a=1", "-S", "b=2"])
    assert (args.index_command, args.path, args.granularity, args.set, args.update) == (
        "add", "docs/", "document", ["a=1", "b=2"], False)
    args = ap.parse_args(["api", "--port", "8080"])
    assert (args.host, args.port, args.project_dir) == (None, 8080, ".")


@pytest.mark.parametrize("argv", [["index"], ["index", "add", "p", "--granularity", "word"], ["api", "--port", "x"],
                                  ["ask", "q", "--json", "--batch-size", "-1"], ["ask", "q", "--batch-size", "0"],
                                  ["index", "add", "p", "--batch-size", "0"], ["ask", "q", "--batch-size", "two"]])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2


def test_onegen_registers_them_after_its_own_commands():
    from flows.cli import _parser

    sub = _parser()._subparsers._group_actions[0]
    assert list(sub.choices) == ["repro", "sweep", "serve", "ui", "ask", "link", "index", "api"]


def test_a_batch_size_below_one_is_refused_with_its_reason(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["ask", "q", "--json", "--batch-size", "-1"])
    assert "argument --batch-size: must be at least 1, got -1" in capsys.readouterr().err
