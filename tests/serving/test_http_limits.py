"""Connection-level bounds of `onegen api` (tasks/serving/http_limits.py, `Guard`), probed over bare
sockets on 127.0.0.1 as a hostile client would: silent and half-open connections are closed after the
head deadline, too many or too large headers are refused, a body that stops arriving is a 408, and the
server answers normal requests throughout. The deadlines are shortened for the test; every wait is
bounded."""
from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.serving.conftest import ARTHUR, one_thread, tiny_params, tiny_project

httpx = pytest.importorskip("httpx")
HEAD_S = 0.6  # the request-head deadline the test server runs with
BODY_S = 1.0  # serve.request_timeout_s: also the bound on a body that stops arriving


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from tasks.serving.app import create_app, serve_in_thread
    from tasks.serving.service import ModelService

    with one_thread():
        paths = tiny_project(tmp_path_factory)
    params = tiny_params(paths, request_timeout_s=BODY_S)
    service = ModelService(params)
    with serve_in_thread(create_app(service, params.serve), header_timeout_s=HEAD_S) as u:
        yield u


def connect(u: str) -> socket.socket:
    parts = urlsplit(u)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def closed_within(s: socket.socket, bound_s: float) -> tuple[bool, float, bytes]:
    """(whether the server closed the connection within bound_s, when, what it sent before)."""
    t0, got = time.monotonic(), b""
    s.settimeout(0.2)
    while time.monotonic() - t0 < bound_s:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, time.monotonic() - t0, got
        if not chunk:
            return True, time.monotonic() - t0, got
        got += chunk
    return False, time.monotonic() - t0, got


def test_a_connection_that_sends_nothing_is_closed_after_the_head_deadline(url):
    s = connect(url)
    closed, after, got = closed_within(s, 10 * HEAD_S)
    assert closed and got == b"" and after >= HEAD_S * 0.5
    s.close()


def test_a_half_sent_request_head_is_closed_after_the_head_deadline(url):
    s = connect(url)
    s.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")  # no blank line
    closed, _, got = closed_within(s, 10 * HEAD_S)
    assert closed and got == b""
    s.close()
    # trickling one header byte at a time does not extend the deadline
    s = connect(url)
    t0 = time.monotonic()
    try:
        for _ in range(int(4 * HEAD_S / 0.1)):
            s.sendall(b"X")
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass
    closed, _, _ = closed_within(s, 10 * HEAD_S)
    assert closed and time.monotonic() - t0 < 10 * HEAD_S
    s.close()


def test_a_kept_alive_connection_that_starts_a_second_head_and_stops_is_closed(url):
    s = connect(url)
    s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /v1/health HTTP/1.1\r\n")  # the next request's first line, then nothing
    closed, _, _ = closed_within(s, 10 * HEAD_S)
    assert closed
    s.close()


def test_too_many_headers_are_a_431_and_too_large_a_head_a_400(url):
    from tasks.serving.http_limits import MAX_HEADER_BYTES, MAX_HEADERS

    many = {f"x-h{i}": "v" for i in range(MAX_HEADERS + 1)}
    r = httpx.get(f"{url}/v1/health", headers=many)
    assert r.status_code == 431 and f"more than {MAX_HEADERS}" in r.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/health", headers={f"x-h{i}": "v" for i in range(MAX_HEADERS - 10)}).status_code == 200
    r = httpx.get(f"{url}/v1/health", headers={"x-big": "a" * MAX_HEADER_BYTES})
    assert r.status_code == 431 and f"{MAX_HEADER_BYTES} bytes" in r.json()["error"]["message"]
    # a head that arrives in pieces is cut off while it is buffered, before it is complete
    s = connect(url)
    s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    for _ in range(3):
        s.sendall(b"a" * (MAX_HEADER_BYTES // 2))
        time.sleep(0.05)
    closed, _, got = closed_within(s, 10.0)
    assert closed and got.startswith(b"HTTP/1.1 400")
    s.close()


def test_a_body_that_stops_arriving_is_a_408(url):
    s = connect(url)
    s.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
              b'{"question": ')
    _, _, got = closed_within(s, 10 * BODY_S + 5)
    assert got.startswith(b"HTTP/1.1 408") and b"stopped arriving" in got
    s.close()


def test_the_server_still_answers_after_the_probes(url):
    r = httpx.post(f"{url}/v1/ask", json={"question": ARTHUR}, timeout=60)
    assert r.status_code == 200 and r.json()["answer"] == "Arthur's Magazine"
