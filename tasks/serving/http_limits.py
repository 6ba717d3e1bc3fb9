"""Connection-level bounds of `onegen api` that the ASGI app never sees, and the uvicorn settings that
carry them (`server_config`, used by `onegen api` and `serve_in_thread` alike).

- The request head (request line + headers) is at most MAX_HEADER_BYTES and MAX_HEADERS lines: a head
  that arrives in pieces is cut off by h11 past the size (uvicorn answers 400 and closes); one that
  arrives whole is measured in the app (`Guard`, 431).
- A connection must complete its request head within `header_timeout_s` of connecting, or of sending
  the head's first byte on a kept-alive connection: a client that connects and sends nothing, or half
  a head (slowloris), is closed instead of holding a socket and a file descriptor forever. uvicorn's
  own timers do not cover it: its keep-alive timer runs only between requests, and is cancelled by
  the first byte of the next one.
- An idle kept-alive connection is closed after KEEP_ALIVE_S (uvicorn's timer).
- A body that stops arriving is bounded in the app (`Guard`: 408 after `serve.request_timeout_s`).
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 16 * 1024  # h11's default, set explicitly: the bound is ours to state
MAX_HEADERS = 100  # the most header lines a request may carry (nginx's and Node's order of magnitude)
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5.0


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head (see the module docstring)."""

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # a head still incomplete (h11 waits in IDLE until its blank line) keeps the deadline it had,
        # or gets one (the first byte of a kept-alive connection's next request); a complete one ends it
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection whose request head did not arrive within %.0f s",
                             self.header_timeout_s)
            self.transport.close()


def server_config(app, host: str, port: int, header_timeout_s: float = HEADER_TIMEOUT_S, **kwargs):
    """uvicorn's Config for the API with the bounds above (`kwargs` go to uvicorn: log level, sockets...)."""
    import uvicorn

    protocol = type("OnegenH11Protocol", (BoundedH11Protocol,), {"header_timeout_s": header_timeout_s})
    return uvicorn.Config(app, host=host, port=port, http=protocol, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          timeout_keep_alive=KEEP_ALIVE_S, **kwargs)
