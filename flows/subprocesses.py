"""A command's output streamed, line by line, to a flow's logger, and the command stopped with the flow.

A DVC stage prints for minutes; the flow's log is what a user watches (in Prefect's UI, often far from
the terminal). Each line is cleaned of ANSI colours, has secret values masked, and progress bars (which
redraw with a carriage return) are thinned to one update every few seconds.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any

from flows.redaction import redact

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class OutputLines:
    """Bytes of a command's output in, log lines out. A line ends at '\\n', '\\r\\n' or a lone '\\r';
    a line ended by a lone '\\r' is a progress bar's redraw, logged at most every `progress_every` s
    (the bar's final state ends with a newline and is always logged). Keeps the last `tail` lines."""

    def __init__(self, log: logging.Logger | Any, secrets: list[str], progress_every: float = 10.0,
                 tail: int = 40) -> None:
        self.log, self.secrets, self.progress_every = log, secrets, progress_every
        self.last: deque[str] = deque(maxlen=tail)
        self.buf = b""
        self.last_progress = 0.0

    def emit(self, raw: bytes, progress: bool) -> None:
        line = redact(_ANSI.sub("", raw.decode("utf-8", "replace")).rstrip(), self.secrets)
        if not line.strip():
            return
        if progress:
            now = time.monotonic()
            if now - self.last_progress < self.progress_every:
                return
            self.last_progress = now
        self.last.append(line)
        self.log.info("%s", line)

    def feed(self, chunk: bytes) -> None:
        """Log every line `chunk` completes; an unfinished line waits for the next chunk."""
        buf = self.buf + chunk
        while True:
            i_n, i_r = buf.find(b"\n"), buf.find(b"\r")
            if i_n < 0 and i_r < 0:
                break
            if i_r >= 0 and (i_n < 0 or i_r < i_n):
                if buf[i_r + 1: i_r + 2] == b"\n":  # CRLF
                    self.emit(buf[:i_r], False)
                    buf = buf[i_r + 2:]
                elif i_r + 1 >= len(buf):  # maybe the CR of a CRLF split across reads
                    break
                else:
                    self.emit(buf[:i_r], True)
                    buf = buf[i_r + 1:]
            else:
                self.emit(buf[:i_n], False)
                buf = buf[i_n + 1:]
        self.buf = buf

    def close(self) -> None:
        """The output ended: log what is left of an unfinished line."""
        if self.buf:
            self.emit(self.buf, False)
            self.buf = b""


def stream_command(cmd: list[str], cwd: Path, env: dict[str, str], log: logging.Logger | Any,
                   secrets: list[str], progress_every: float = 10.0, tail: int = 40) -> tuple[int, list[str]]:
    """Run `cmd`, sending each output line to `log` (ANSI colours stripped, secret values redacted).
    Progress bars redraw with a carriage return: such updates are logged at most every `progress_every`
    seconds (the bar's final state ends with a newline and is always logged). Returns (exit code, last
    lines). Interrupting the flow (Ctrl-C, cancellation) stops the command too."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    lines = OutputLines(log, secrets, progress_every, tail)
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            lines.feed(chunk)
        lines.close()
        return proc.wait(), list(lines.last)
    finally:
        if proc.poll() is None:  # we are being interrupted: stop DVC (it stops the stage) and wait
            stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop `proc`'s session (a command started with `start_new_session`): SIGINT, then SIGTERM, then
    SIGKILL, each given `grace` seconds."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the command's own session: DVC and the stage it runs
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
