"""The `onegen` command. Heavy libraries are imported inside each subcommand, so `--help` is fast."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="onegen", description="OneGen: one-pass generation and retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train-core", add_help=False,
                   help="single-process OneGen training on the HotpotQA samples (embedded default); see --help")
    args, rest = parser.parse_known_args(argv)
    if args.command == "train-core":
        from tasks.train_core import main as train_core

        train_core(rest)


if __name__ == "__main__":
    main()
