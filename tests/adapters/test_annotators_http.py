"""tasks.adapters.annotators against a real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol.

The server (started here, port 0, loopback only) picks its behaviour from the first path segment
(``/<mode>/v1/chat/completions``) and counts requests per (mode, example id), reading the example back
from the question in the prompt. Each test is bounded by short client timeouts and backoffs.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from onegen_core.data import load_hotpotqa
from onegen_core.prepare.decomposition import heuristic_decomposition, prompt_documents
from tasks.adapters.annotation_cache import AnnotationCache
from tasks.adapters.annotation_runner import annotate
from tasks.adapters.annotators import LocalHFBackend, OpenAIChatBackend, make_backend

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT.parent / "shared" / "data" / "hotpotqa" / "train_sample.json"
KEY_ENV = "ONEGEN_TEST_API_KEY"
SECRET = "sk-test-7c1f0e9b2d4a4e63-DO-NOT-LEAK"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def good_answer(record) -> str:
    """A well-formed decomposition for a record: one step per supporting document, by number."""
    numbers = {p.title: n for n, p in enumerate(prompt_documents(record), start=1)}
    steps = "".join(
        f"<SUB-QUESTION-{k}>What does {s.doc_title} say?</SUB-QUESTION-{k}>\n"
        f"<CORRESPONDING-DOC-{k}>[{numbers[s.doc_title]}]</CORRESPONDING-DOC-{k}>\n"
        f"<SUB-ANSWER-{k}>something</SUB-ANSWER-{k}>\n"
        for k, s in enumerate(heuristic_decomposition(record).steps, start=1)
    )
    return steps + f"<FINAL-ANSWER>{record.answer}</FINAL-ANSWER>"


# --------------------------------------------------------------------------- the server


class ServerState:
    """What the server saw: (mode, example id, Authorization header) per request, in arrival order."""

    def __init__(self, records) -> None:
        self.by_question = {r.question.strip(): r for r in records}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []

    def arrive(self, mode: str, example_id: str, authorization: str | None) -> int:
        """Record a request; return its number for this (mode, example) (1-based)."""
        with self.lock:
            self.requests.append((mode, example_id, authorization))
            return sum(1 for m, e, _ in self.requests if (m, e) == (mode, example_id))

    def counts(self, mode: str) -> Counter:
        with self.lock:
            return Counter(e for m, e, _ in self.requests if m == mode)

    def ids(self, mode: str, start: int = 0) -> list[str]:
        with self.lock:
            return [e for m, e, _ in self.requests[start:] if m == mode]


class ChatHandler(BaseHTTPRequestHandler):
    state: ServerState  # set on the subclass made by the fixture

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers=()) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out or was killed
            pass

    def _reply(self, content: str) -> None:
        payload = {"id": "cmpl-test", "object": "chat.completion", "model": "qwen-test",
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content}}]}
        self._send(200, json.dumps(payload).encode())

    def do_POST(self) -> None:
        mode, _, rest = self.path.strip("/").partition("/")
        if rest != "v1/chat/completions":
            return self._send(404, b'{"error": "not found"}')
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        record = self.state.by_question[re.findall(r"^<QUESTION> (.*) </QUESTION>$", prompt, re.M)[-1]]  # the task
        authorization = self.headers.get("Authorization")
        n = self.state.arrive(mode, record.id, authorization)
        if mode == "good":
            self._reply(good_answer(record))
        elif mode == "garbage":
            self._send(200, b"<html>upstream maintenance</html>", "text/html")
        elif mode == "malformed":
            self._reply("Sure! The final answer is " + record.answer)
        elif mode == "flaky500":
            self._send(500, b'{"error": "boom"}') if n == 1 else self._reply(good_answer(record))
        elif mode == "ratelimit":
            self._send(429, b'{"error": "slow down"}', headers=[("Retry-After", "0")]) if n == 1 \
                else self._reply(good_answer(record))
        elif mode == "slow":
            time.sleep(1.5)
            self._reply(good_answer(record))
        elif mode == "slowgood":
            time.sleep(0.25)
            self._reply(good_answer(record))
        elif mode == "unauthorized":  # echoes the header back, as a careless server might
            self._send(401, json.dumps({"error": f"invalid key in {authorization}"}).encode())
        else:
            self._send(404, b'{"error": "unknown mode"}')


@pytest.fixture(scope="module")
def train_records():
    return load_hotpotqa(TRAIN)


@pytest.fixture(scope="module")
def server(train_records):
    state = ServerState(train_records)
    handler = type("Handler", (ChatHandler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    for name in PROXY_VARS:  # loopback only, never through a proxy
        monkeypatch.delenv(name, raising=False)


def backend_for(url: str, mode: str, **overrides) -> OpenAIChatBackend:
    settings = dict(base_url=f"{url}/{mode}/v1", model="qwen-test", api_key_env=KEY_ENV, timeout_s=2.0,
                    max_retries=2, backoff_s=0.01, max_concurrency=4)
    return OpenAIChatBackend(**(settings | overrides))


def run(backend, records, path, max_attempts: int = 2):
    with AnnotationCache(path) as cache:
        return annotate(records, backend, cache, max_attempts=max_attempts)


# --------------------------------------------------------------------------- modes


def test_good_answers_are_accepted_with_the_authorization_header(server, train_records, tmp_path):
    state, url = server
    records = train_records[:6]
    report = run(backend_for(url, "good"), records, tmp_path / "c.jsonl")
    assert (report.accepted, report.requests, report.errors) == (6, 6, 0)
    assert state.counts("good") == Counter({r.id: 1 for r in records})
    assert {a for m, _, a in state.requests if m == "good"} == {f"Bearer {SECRET}"}
    again = run(backend_for(url, "good"), records, tmp_path / "c.jsonl")
    assert (again.cached, again.requests) == (6, 0)
    assert sum(state.counts("good").values()) == 6


def test_no_key_in_the_environment_sends_no_authorization(server, train_records, tmp_path, monkeypatch):
    state, url = server
    monkeypatch.delenv(KEY_ENV)
    report = run(backend_for(url, "good"), train_records[6:7], tmp_path / "c.jsonl")
    assert report.accepted == 1
    assert state.requests[-1] == ("good", train_records[6].id, None)


def test_non_json_body_is_retried_then_an_uncached_error(server, train_records, tmp_path):
    state, url = server
    records = train_records[:2]
    report = run(backend_for(url, "garbage", max_retries=2), records, tmp_path / "c.jsonl")
    assert (report.errors, report.accepted, report.requests) == (2, 0, 2)
    assert state.counts("garbage") == Counter({r.id: 3 for r in records})  # 1 + max_retries each
    assert all("not JSON" in message for message in report.error_examples.values())
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        assert len(cache) == 0


def test_malformed_decomposition_is_retried_then_rejected(server, train_records, tmp_path):
    state, url = server
    records = train_records[:3]
    report = run(backend_for(url, "malformed"), records, tmp_path / "c.jsonl", max_attempts=3)
    assert report.rejected == {"no_steps": 3} and report.requests == 9
    assert state.counts("malformed") == Counter({r.id: 3 for r in records})
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        assert {(r.status, r.reason, r.attempts) for _, r in cache} == {("rejected", "no_steps", 3)}
    assert run(backend_for(url, "malformed"), records, tmp_path / "c.jsonl").cached == 3  # final: not re-asked
    assert sum(state.counts("malformed").values()) == 9


@pytest.mark.parametrize("mode", ["flaky500", "ratelimit"])
def test_500_and_429_are_retried_then_succeed(server, train_records, tmp_path, mode, caplog):
    state, url = server
    records = train_records[:3]
    backend = backend_for(url, mode)
    with caplog.at_level(logging.WARNING, logger="tasks.adapters.annotators"):
        report = run(backend, records, tmp_path / "c.jsonl")
    assert (report.accepted, report.errors, report.requests) == (3, 0, 3)
    assert state.counts(mode) == Counter({r.id: 2 for r in records})
    # the stage reports what the server did: one HTTP retry per question, 3 completions, none cut
    assert backend.stats == Counter({"http_retries": 3, "completions": 3})
    status = "500" if mode == "flaky500" else "429"
    assert sum(f"HTTP {status}; retry 1/2" in m for m in caplog.messages) == 3


def test_a_timeout_is_retried_then_an_error(server, train_records, tmp_path):
    state, url = server
    records = train_records[:2]
    started = time.monotonic()
    report = run(backend_for(url, "slow", timeout_s=0.3, max_retries=1), records, tmp_path / "c.jsonl")
    assert time.monotonic() - started < 2.0
    assert (report.errors, report.accepted) == (2, 0)
    assert state.counts("slow") == Counter({r.id: 2 for r in records})
    assert all("timed out" in message for message in report.error_examples.values())
    with AnnotationCache(tmp_path / "c.jsonl") as cache:
        assert len(cache) == 0


def test_401_is_not_retried_and_the_echoed_key_is_redacted(server, train_records, tmp_path):
    state, url = server
    records = train_records[:2]
    report = run(backend_for(url, "unauthorized"), records, tmp_path / "c.jsonl")
    assert (report.errors, report.requests) == (2, 2)
    assert state.counts("unauthorized") == Counter({r.id: 1 for r in records})
    messages = list(report.error_examples.values())
    assert all("HTTP 401" in m and "Bearer ***" in m and SECRET not in m for m in messages)


def test_connection_refused_is_retried_then_an_error(train_records, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = run(backend_for(f"http://127.0.0.1:{port}", "good", max_retries=1), train_records[:1],
                 tmp_path / "c.jsonl")
    assert report.errors == 1 and "connection failed" in report.error_examples[train_records[0].id]


def test_the_key_never_leaks(server, train_records, tmp_path, caplog):
    _, url = server
    records = train_records[10:12]
    texts = []
    with caplog.at_level(logging.DEBUG):
        for mode in ("good", "garbage", "malformed", "flaky500", "ratelimit", "unauthorized"):
            backend = backend_for(url, mode, max_retries=1)
            report = run(backend, records, tmp_path / f"{mode}.jsonl")
            texts += [repr(backend), str(backend), json.dumps(report.to_dict())]
        slow = backend_for(url, "slow", timeout_s=0.2, max_retries=0)
        texts.append(json.dumps(run(slow, train_records[12:13], tmp_path / "slow.jsonl").to_dict()))
    texts += [caplog.text] + [p.read_text() for p in sorted(tmp_path.glob("*.jsonl"))]
    assert caplog.records and "Bearer ***" in "".join(texts)  # the 401 echo was seen, redacted
    assert all(SECRET not in text for text in texts)
    assert SECRET not in json.dumps(vars(backend_for(url, "good")), default=str)


def test_backend_settings_are_validated():
    with pytest.raises(ValueError):
        OpenAIChatBackend(base_url="127.0.0.1:8000/v1", model="m")
    with pytest.raises(ValueError):
        OpenAIChatBackend(base_url="http://127.0.0.1:8000/v1", model="m", timeout_s=0)


def test_make_backend():
    assert make_backend("heuristic") is None
    backend = make_backend("openai", base_url="http://127.0.0.1:9/v1/", model="Qwen/Qwen2-72B-Instruct")
    assert isinstance(backend, OpenAIChatBackend) and backend.url == "http://127.0.0.1:9/v1/chat/completions"
    with pytest.raises(ValueError, match="one of"):
        make_backend("claude")
    with pytest.raises(ValueError, match="bad settings"):
        make_backend("openai", base_url="http://127.0.0.1:9/v1", model="m", temprature=0.5)


# --------------------------------------------------------------------------- kill and resume

RUNNER = """\
import json, logging, sys
from tasks.adapters.annotation_cache import AnnotationCache
from tasks.adapters.annotation_runner import annotate
from onegen_core.data import load_hotpotqa
from tasks.adapters.annotators import OpenAIChatBackend

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
train, url, cache_path, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
backend = OpenAIChatBackend(base_url=url, model="qwen-test", api_key_env=%(key_env)r, timeout_s=5.0,
                            max_retries=1, backoff_s=0.01, max_concurrency=2)
with AnnotationCache(cache_path) as cache:
    report = annotate(load_hotpotqa(train)[:count], backend, cache, max_attempts=2)
print(json.dumps(report.to_dict()))
"""


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env["PYTHONPATH"] = str(ROOT)
    return env


def cached_ids(path: Path) -> list[str]:
    """Example ids of the complete lines of a cache file, in order (a torn last line is skipped)."""
    ids = []
    for line in path.read_bytes().split(b"\n"):
        try:
            ids.append(json.loads(line)["key"][0])
        except ValueError:
            continue
    return ids


def test_kill_and_resume_pays_for_nothing_twice(server, train_records, tmp_path):
    state, url = server
    count = 12
    records = train_records[20:20 + count]  # ids not used by other tests
    script = tmp_path / "run_annotation.py"
    script.write_text(RUNNER % {"key_env": KEY_ENV})
    cache_path = tmp_path / "cache.jsonl"
    train_subset = tmp_path / "train.json"
    train_subset.write_text(json.dumps(json.loads(TRAIN.read_text())[20:20 + count]))
    argv = [sys.executable, str(script), str(train_subset), f"{url}/slowgood/v1", str(cache_path), str(count)]

    with open(tmp_path / "first.err", "wb") as err:
        first = subprocess.Popen(argv, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline and first.poll() is None:
            if cache_path.exists() and cache_path.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=5) == -signal.SIGKILL  # killed mid-run, not finished
    requests_at_kill = len(state.requests)
    before = set(cached_ids(cache_path))
    assert 3 <= len(before) < count

    second = subprocess.run(argv, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=15)
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads(second.stdout.strip().splitlines()[-1])
    assert report["cached"] == len(before) and report["accepted"] == count - len(before)

    lines = cached_ids(cache_path)
    assert Counter(lines) == Counter({r.id: 1 for r in records})  # every example exactly once
    assert not before & set(state.ids("slowgood", requests_at_kill))  # nothing cached was asked again
    counts = state.counts("slowgood")
    assert all(counts[i] == 1 for i in before)
    with AnnotationCache(cache_path) as cache:
        assert len(cache) == count and cache.duplicate_lines == 0
    logs = (tmp_path / "first.err").read_text() + second.stderr + second.stdout + cache_path.read_text()
    assert "POST" in logs or "annotation" in logs
    assert SECRET not in logs


# --------------------------------------------------------------------------- local transformers backend


def test_local_hf_backend_is_greedy_and_uses_the_chat_template(tmp_path, char_tokenizer, tiny_lm):
    tiny_lm.config.eos_token_id = None  # never stop early: exactly max_new_tokens come back
    tiny_lm.save_pretrained(tmp_path)
    import copy

    tok = copy.deepcopy(char_tokenizer)  # the fixture is shared by the session: never give it a template
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>"
    tok.save_pretrained(tmp_path)
    backend = LocalHFBackend(tmp_path, max_new_tokens=4)
    assert backend._has_chat_template() and backend.name == "hf" and backend.model == str(tmp_path)
    ids = backend._encode("hi")["input_ids"][0].tolist()
    assert ids == char_tokenizer("<|user|>hi<|assistant|>", add_special_tokens=False)["input_ids"]
    first = backend.complete("hi")
    assert isinstance(first, str) and first == backend.complete("hi")


@pytest.mark.slow
def test_ray_fan_out_against_the_loopback_server(server, train_records, tmp_path):
    """Requests run as Ray tasks on a local Ray; the driver writes the cache; a re-run sends nothing."""
    ray = pytest.importorskip("ray")
    from tasks.adapters.annotation_runner import ray_runner

    state, url = server
    records = train_records[:6]
    backend = backend_for(url, "slowgood")
    try:
        with AnnotationCache(tmp_path / "cache.jsonl") as cache:
            first = annotate(records, backend, cache, max_attempts=2, max_concurrency=3, runner=ray_runner())
        assert first.accepted == 6 and first.requests == 6 and first.errors == 0
        assert sorted(state.counts("slowgood")[r.id] for r in records) == [1] * 6
        assert all(auth == f"Bearer {SECRET}" for m, _, auth in state.requests if m == "slowgood")
        with AnnotationCache(tmp_path / "cache.jsonl") as cache:
            again = annotate(records, backend, cache, max_attempts=2, max_concurrency=3, runner=ray_runner())
            assert again.cached == 6 and again.requests == 0 and len(cache) == 6
        assert SECRET not in (tmp_path / "cache.jsonl").read_text()
    finally:
        ray.shutdown()
