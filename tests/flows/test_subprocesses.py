"""flows/subprocesses.py: a command's output split into log lines (colours stripped, secrets masked,
progress redraws thinned) and the command stopped with the flow."""
from __future__ import annotations

import subprocess
import sys
import time


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, fmt: str, *args) -> None:
        self.lines.append(fmt % args)


def test_lines_end_at_lf_crlf_or_cr_even_split_across_chunks():
    from flows.subprocesses import OutputLines

    log = Log()
    out = OutputLines(log, [], progress_every=0.0)
    for chunk in (b"one\r", b"\ntwo\n", b"\x1b[32mgreen\x1b[0m\n", b"  \n", b"bar 10%\rbar 50%\rbar 100%\n", b"tail"):
        out.feed(chunk)
    assert log.lines == ["one", "two", "green", "bar 10%", "bar 50%", "bar 100%"]  # "tail" not ended yet
    out.close()
    assert log.lines[-1] == "tail" and list(out.last) == log.lines


def test_progress_redraws_are_thinned_but_finished_lines_never(monkeypatch):
    from flows.subprocesses import OutputLines

    monkeypatch.setattr(time, "monotonic", lambda: 1000.0)  # a frozen clock: 1000 s since no redraw yet
    log = Log()
    out = OutputLines(log, [], progress_every=10.0, tail=2)
    out.feed(b"bar 10%\rbar 50%\rbar 100%\nsecond\n")
    assert log.lines == ["bar 10%", "bar 100%", "second"]  # the first redraw, then only the final state
    assert list(out.last) == ["bar 100%", "second"]  # the last `tail` lines


def test_secret_values_are_masked_in_every_line():
    from flows.subprocesses import OutputLines

    log = Log()
    out = OutputLines(log, ["hunter2-secret"])
    out.feed(b"key=hunter2-secret ok\n")
    assert log.lines == ["key=*** ok"]


def test_stop_process_group_ends_a_command_that_ignores_sigint():
    from flows.subprocesses import stop_process_group

    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout.readline() == b"up\n"
    t0 = time.monotonic()
    stop_process_group(proc, grace=0.5)
    assert proc.returncode is not None and time.monotonic() - t0 < 10  # SIGINT ignored, SIGTERM ends it
    proc.stdout.close()
