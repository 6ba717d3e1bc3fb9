"""`onegen api` over HTTP: a real uvicorn server (in a thread, on 127.0.0.1) in front of the tiny trained
checkpoint, its LanceDB index and the real batching engine, driven with httpx. Happy paths and their
JSON shapes, server-sent events, a 4xx naming the field for each bad field, 429 on a full queue, 504 past
the deadline, clients that leave, auth on and off, batched answers equal to one-at-a-time answers, and a
request that fails without taking the server down.

Nothing here waits on a clock to make something happen: the engine is held deterministically by holding
the model's lock (`ModelService.lock`, which the engine's worker takes around every batch), and a batch
departs full (its `max_wait_ms` is only a bound). Loops that poll the server's state have a generous
deadline that only trips when something hangs.
"""
from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

from tests.serving.conftest import ARTHUR, DERRICKSON, OBAMA, PARIS, assert_same_answer, tiny_params

httpx = pytest.importorskip("httpx")


@contextmanager
def served(service, api_key=None, **serve):
    """(URL, app) of a running server over `service` with these serve.* settings."""
    from tasks.serving.app import create_app, serve_in_thread

    cfg = tiny_params({"checkpoint": service.checkpoint, "index": service.index_uri}, **serve).serve
    app = create_app(service, cfg, api_key=api_key)
    with serve_in_thread(app) as url:
        yield url, app


@contextmanager
def server(service, api_key=None, **serve):
    with served(service, api_key, **serve) as (url, _):
        yield url


@pytest.fixture(scope="module")
def url(service):
    with server(service) as u:
        yield u


def sse(response) -> list[tuple[str, object]]:
    """(event, data) records of a server-sent event stream; data parsed as JSON except [DONE]."""
    out, event = [], "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
            out.append((event, data if data == "[DONE]" else json.loads(data)))
            event = "message"
    return out


def wait_for(predicate, what: str, bound_s: float = 60.0) -> None:
    """Poll the server's state until `predicate()`; the bound only catches a hang."""
    deadline = time.monotonic() + bound_s
    while not predicate():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.01)


def engine_state(u: str) -> dict:
    return httpx.get(f"{u}/v1/health", timeout=30).json()["engine"]


@contextmanager
def model_held(service):
    """Hold the model: the engine's worker takes a batch, then waits for the lock inside `run_ask` /
    `run_link`. Yields a function that lets it go early (it is let go on exit in any case)."""
    service.lock.acquire()
    held = [True]

    def release() -> None:
        if held[0]:
            held[0] = False
            service.lock.release()

    try:
        yield release
    finally:
        release()


def record_jobs(app, pause_after_first: str | None = None) -> list:
    """The engine's submitted jobs, in order (the real engine; only `submit` is observed). With
    `pause_after_first`, the worker thread stops after streaming the first event of that type until that
    request is cancelled (its client left): a deterministic "mid-stream"."""
    engine = app.state.engine
    jobs: list = []
    submit = engine.submit

    def observed(job):
        inner = job.sink
        if pause_after_first and inner is not None:
            def sink(ev, job=job, paused=[False]):
                inner(ev)
                if ev["type"] == pause_after_first and not paused[0]:
                    paused[0] = True
                    job.cancelled.wait(60)
            job.sink = sink
        jobs.append(job)
        return submit(job)

    engine.submit = observed
    return jobs


def in_thread(fn, *args, **kwargs):
    """Run `fn` in a thread; returns (thread, box) where box["r"] is its result."""
    box: dict = {}

    def run():
        box["r"] = fn(*args, **kwargs)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def raw_post(u: str, path: str, body: dict) -> socket.socket:
    """A POST over a bare socket, so that the test can hang up without reading the answer."""
    host, port = urlsplit(u).hostname, urlsplit(u).port
    data = json.dumps(body).encode()
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % (path.encode(), host.encode(), len(data)) + data)
    return s


# ------------------------------------------------------------------------------------------ happy paths

def test_ask_returns_the_answer_its_retrievals_and_counts(url, service):
    r = httpx.post(f"{url}/v1/ask", json={"question": ARTHUR, "top_k": 2}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "question", "answer", "text", "sampled_text", "stop",
                         "retrievals", "finish_reason", "counts", "batch"}
    assert body["stop"] is None and body["text"].endswith(body["sampled_text"][-40:])
    assert body["object"] == "ask" and body["model"] == service.checkpoint_id and body["id"].startswith("ask-")
    assert body["question"] == ARTHUR and isinstance(body["created"], int)
    assert body["answer"] == "Arthur's Magazine" and body["finish_reason"] == "eos"
    assert body["text"].endswith("<FINAL-ANSWER>Arthur's Magazine</FINAL-ANSWER>")
    assert [e["query"] for e in body["retrievals"]] == [0, 1] and [len(e["hits"]) for e in body["retrievals"]] == [2, 2]
    # the model retrieves the two passages the question needs, in order, and ranks them first
    assert [e["hits"][0]["doc_id"] for e in body["retrievals"]] == ["arthurs-magazine", "first-for-women"]
    for e in body["retrievals"]:
        assert [h["rank"] for h in e["hits"]] == [1, 2]
        assert all(set(h) == {"rank", "id", "doc_id", "title", "text", "score"} for h in e["hits"])
        assert e["hits"][0]["score"] >= e["hits"][1]["score"] and all(-1 <= h["score"] <= 1 for h in e["hits"])
    assert set(body["counts"]) == {"prompt_tokens", "generated_tokens", "pasted_tokens", "retrievals"}
    assert body["counts"]["retrievals"] == 2 and body["counts"]["generated_tokens"] > 0
    assert set(body["batch"]) == {"rows", "forward_passes", "searches", "seconds", "queue_ms"}
    assert body["batch"]["rows"] == 1 and body["batch"]["searches"] == 2


def test_link_returns_spans_entities_and_the_elevant_shape(url):
    r = httpx.post(f"{url}/v1/link", json={"text": OBAMA, "top_k": 2}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "text", "mentions", "finish_reason", "counts", "batch"}
    assert body["object"] == "link" and body["text"] == OBAMA and body["finish_reason"] == "eos"
    assert body["counts"] == {"windows": 1, "mentions": 2, "linked": 2, "abstained": 0,
                              "generated_tokens": body["counts"]["generated_tokens"]}
    assert [(m["start"], m["end"], m["text"], m["entity"]["id"]) for m in body["mentions"]] == \
           [(0, 5, "Obama", "Q76"), (18, 26, "Honolulu", "Q18094")]
    for m in body["mentions"]:
        assert OBAMA[m["start"]:m["end"]] == m["text"]
        assert set(m["entity"]) == {"id", "title", "score"} and len(m["candidates"]) == 2
        assert m["candidates"][0]["id"] == m["entity"]["id"]  # best first: the linked entry
    art = httpx.post(f"{url}/v1/link", json={"text": OBAMA, "format": "elevant"}, timeout=60).json()
    assert list(art) == ["id", "title", "text", "entity_mentions", "evaluation_span", "labels"]
    assert [(e["span"], e["id"]) for e in art["entity_mentions"]] == [([0, 5], "Q76"), ([18, 26], "Q18094")]


def test_health_and_info(url, service):
    r = httpx.get(f"{url}/v1/health")
    h = r.json()
    assert r.status_code == 200 and h["status"] == "ok" and h["model"] == service.checkpoint_id
    assert h["engine"]["alive"] and h["link"] is True and h["auth"] is False
    assert {"queued", "running_rows", "completed", "failed", "rejected", "timed_out", "cancelled", "batches",
            "mean_batch_rows"} <= set(h["engine"])
    info = httpx.get(f"{url}/v1/info").json()
    assert info["model"]["checkpoint_id"] == service.checkpoint_id and info["model"]["checkpoint"] == service.checkpoint
    assert info["model"]["architecture"] == "Qwen2ForCausalLM" and info["model"]["parameters"] > 0
    assert info["index"]["units"]["rows"] == 10 and info["index"]["entities"]["rows"] == 5
    assert info["index"]["units"]["checkpoint_id"] == service.checkpoint_id
    assert info["index"]["units"]["titles"]["distinct"] == 5 and len(info["index"]["units"]["titles"]["sample"]) == 5
    assert info["index"]["units"]["sources"] is None  # the tiny tables record none
    assert info["defaults"]["ask"] == {"max_tokens": 48, "max_retrievals": 3, "top_k": 3, "temperature": 0.0}
    s = service.params.serve
    assert info["limits"] == {"max_text_chars": s.max_text_chars, "max_tokens": s.max_new_tokens,
                              "max_top_k": s.max_top_k, "max_batch_size": s.max_batch_size,
                              "max_wait_ms": s.max_wait_ms, "max_queue": s.max_queue,
                              "request_timeout_s": s.request_timeout_s}
    assert info["engine"]["alive"]


def test_the_web_page_is_served_at_the_root(url):
    r = httpx.get(f"{url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="question"' in r.text and 'id="link-text"' in r.text and "/v1/ask" in r.text
    assert httpx.get(f"{url}/openapi.json").json()["paths"].keys() >= {"/v1/ask", "/v1/link", "/v1/health", "/v1/info"}


# ------------------------------------------------------------------------------------------ streaming

def test_ask_streams_tokens_and_retrievals_then_the_final_object(url):
    with httpx.stream("POST", f"{url}/v1/ask", json={"question": ARTHUR, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    kinds = [e for e, _ in events]
    assert kinds[0] == "token" and kinds[1] == "retrieval" and kinds[-2:] == ["done", "message"]
    assert events[-1][1] == "[DONE]" and kinds.count("retrieval") == 2 and kinds.count("done") == 1
    assert set(kinds) == {"token", "retrieval", "done", "message"}
    assert all(d["type"] == e for e, d in events[:-1])
    tokens = [d for e, d in events if e == "token"]
    assert tokens[0] == {"type": "token", "id": tokens[0]["id"], "text": "[RQ]", "special": True}
    done = events[-2][1]["result"]
    assert len(tokens) == done["counts"]["generated_tokens"]
    assert "".join(d["text"] for d in tokens).endswith("<FINAL-ANSWER>Arthur's Magazine</FINAL-ANSWER>")
    # each retrieval is sent as it happens, and is the one the final object lists
    assert [{k: v for k, v in d.items() if k != "type"} for e, d in events if e == "retrieval"] == done["retrievals"]
    plain = httpx.post(f"{url}/v1/ask", json={"question": ARTHUR}, timeout=60).json()
    assert_same_answer(plain, done)


def test_link_streams_each_mention_as_it_is_linked(url):
    with httpx.stream("POST", f"{url}/v1/link", json={"text": PARIS, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    mentions = [d for e, d in events if e == "mention"]
    assert [(m["text"], m["entity"]["id"]) for m in mentions] == [("Paris", "Q90"), ("France", "Q142")]
    assert [e for e, _ in events] == ["mention", "mention", "done", "message"] and events[-1][1] == "[DONE]"
    assert [{k: v for k, v in m.items() if k != "type"} for m in mentions] == events[-2][1]["result"]["mentions"]
    with httpx.stream("POST", f"{url}/v1/link", json={"text": PARIS, "stream": True, "format": "elevant"},
                      timeout=60) as r:
        art = sse(r)[-2][1]["result"]
    assert [(e["span"], e["id"]) for e in art["entity_mentions"]] == [([0, 5], "Q90"), ([24, 30], "Q142")]


def test_a_client_that_leaves_mid_stream_stops_its_rows(service):
    text = (OBAMA + " ") * 40  # two windows, ~130 mentions when run to the end
    with served(service) as (u, app):
        full = httpx.post(f"{u}/v1/link", json={"text": text}, timeout=60).json()
        assert full["counts"]["windows"] == 2 and full["counts"]["mentions"] > 50
        # the worker pauses after its first streamed mention until the server has seen the client leave
        jobs = record_jobs(app, pause_after_first="mention")
        with httpx.stream("POST", f"{u}/v1/link", json={"text": text, "stream": True}, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("event: mention"):
                    break  # the first mention arrived: hang up
        wait_for(lambda: engine_state(u)["cancelled"] == 1, "the request to be cancelled")
        state = engine_state(u)
        assert state["completed"] == 1 and state["failed"] == 0  # only the full run above completed
        # the rows stopped before their next token: no more than a pending span per row and the error
        assert jobs[0].sent <= 2 * full["counts"]["windows"] + 2
        r = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, timeout=60)
        assert r.json()["answer"] == "Arthur's Magazine"


def test_a_plain_request_whose_client_leaves_is_stopped_running_or_queued(service):
    # a non-streaming client that hangs up must not keep its row (or its queue slot) to the end
    with served(service, max_batch_size=1) as (u, app):
        jobs = record_jobs(app)
        with model_held(service) as release:
            running = raw_post(u, "/v1/ask", {"question": ARTHUR})
            wait_for(lambda: engine_state(u)["running_rows"] == 1, "the first request to be in a batch")
            queued = raw_post(u, "/v1/ask", {"question": DERRICKSON})
            wait_for(lambda: engine_state(u)["queued"] == 1, "the second request to be queued")
            t, box = in_thread(httpx.post, f"{u}/v1/ask", json={"question": DERRICKSON}, timeout=60)
            wait_for(lambda: engine_state(u)["queued"] == 2, "the third request to be queued")
            running.close()
            queued.close()
            wait_for(lambda: jobs[0].cancelled.is_set() and jobs[1].cancelled.is_set(), "the server to see both leave")
        t.join(60)
        assert box["r"].status_code == 200 and box["r"].json()["answer"] == "yes"
        state = engine_state(u)
        assert (state["cancelled"], state["completed"], state["failed"]) == (2, 1, 0)
        assert state["batches"] == 2  # the queued request that left never ran


# ------------------------------------------------------------------------------------------ bad requests

BAD_ASK = [
    ({}, "question"),
    ({"question": ""}, "question"),
    ({"question": "  \n "}, "question"),
    ({"question": 7}, "question"),
    ({"question": None}, "question"),
    ({"question": ["a"]}, "question"),
    ({"question": "Is <MENTION> a token?"}, "question"),
    ({"question": "q", "max_tokens": 0}, "max_tokens"),
    ({"question": "q", "max_tokens": 100000}, "max_tokens"),
    ({"question": "q", "max_tokens": 5.0}, "max_tokens"),
    ({"question": "q", "max_tokens": True}, "max_tokens"),
    ({"question": "q", "max_new_tokens": "5"}, "max_new_tokens"),
    ({"question": "q", "max_new_tokens": 513}, "max_tokens"),
    ({"question": "q", "max_tokens": 5, "max_new_tokens": 5}, "max_new_tokens"),
    ({"question": "q", "top_k": 0}, "top_k"),
    ({"question": "q", "top_k": 21}, "top_k"),
    ({"question": "q", "max_retrievals": -1}, "max_retrievals"),
    ({"question": "q", "temperature": -1}, "temperature"),
    ({"question": "q", "temperature": "hot"}, "temperature"),
    ({"question": "q", "top_p": 1.5}, "top_p"),
    ({"question": "q", "top_p": 0}, "top_p"),
    ({"question": "q", "seed": "s"}, "seed"),
    ({"question": "q", "seed": 2**70}, "seed"),
    ({"question": "q", "stream": "yes"}, "stream"),
    ({"question": "q", "model": 3}, "model"),
    ({"question": "q", "max_token": 5}, "max_token"),
    ({"question": "q", "stop": 5}, "stop"),
    ({"question": "q", "stop": [5]}, "stop"),
    ({"question": "q", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"question": "q", "stop": [""]}, "stop"),
    ({"question": "q", "stop": "x" * 201}, "stop"),
]


@pytest.mark.parametrize("body, param", BAD_ASK, ids=[f"{p}-{n}" for n, (_, p) in enumerate(BAD_ASK)])
def test_a_bad_ask_field_is_a_400_naming_it(url, body, param):
    r = httpx.post(f"{url}/v1/ask", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(f"{param}: ") and err["code"] == 400, err
    assert err["type"] == "invalid_request_error"
    # the same refusal before a stream starts: a status code, not an event
    r = httpx.post(f"{url}/v1/ask", json={**body, "stream": True} if "stream" not in body else body, timeout=30)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"


BAD_LINK = [({}, "text"), ({"text": "   "}, "text"), ({"text": 5}, "text"), ({"text": "a", "format": "xml"}, "format"),
            ({"text": "a", "max_retrievals": 0}, "max_retrievals"), ({"text": "a", "top_k": 1.5}, "top_k"),
            ({"text": "a", "top_k": 21}, "top_k"), ({"text": "see [RQ] here"}, "text"),
            ({"text": "a", "question": "q"}, "question")]


@pytest.mark.parametrize("body, param", BAD_LINK, ids=[f"{p}-{n}" for n, (_, p) in enumerate(BAD_LINK)])
def test_a_bad_link_field_is_a_400_naming_it(url, body, param):
    r = httpx.post(f"{url}/v1/link", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(f"{param}: "), err


def test_texts_over_serve_max_text_chars_are_refused_and_texts_at_it_accepted(url, service):
    limit = service.params.serve.max_text_chars
    for path, field in (("/v1/ask", "question"), ("/v1/link", "text")):
        r = httpx.post(f"{url}{path}", json={field: "x" * (limit + 1)}, timeout=30)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == field, r.text
        assert f"{limit + 1} characters" in err["message"] and str(limit) in err["message"]
        assert "serve.max_text_chars" in err["message"]
    at_limit = ("Which magazine was started first? " * 200)[:limit]
    r = httpx.post(f"{url}/v1/ask", json={"question": at_limit, "max_tokens": 2}, timeout=120)
    assert r.status_code == 200 and r.json()["counts"]["generated_tokens"] <= 2, r.text


def test_text_that_is_not_valid_unicode_is_a_400_naming_the_field(url):
    # JSON may escape a lone surrogate; no tokenizer takes it (was: a 500 from the tokenizer)
    for path, field in (("/v1/ask", "question"), ("/v1/link", "text")):
        r = httpx.post(f"{url}{path}", content=('{"%s": "abc \\ud800 def"}' % field).encode(),
                       headers={"content-type": "application/json"}, timeout=30)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == field and "Unicode" in err["message"], r.text


def test_malformed_bodies_unknown_models_routes_and_oversized_bodies(url):
    as_json = {"content-type": "application/json"}
    cases = [
        (httpx.post(f"{url}/v1/ask", content=b"{not json", headers=as_json), 400, "not valid JSON"),
        (httpx.post(f"{url}/v1/ask", content=b'{"question": "q",}', headers=as_json), 400, "not valid JSON"),
        (httpx.post(f"{url}/v1/ask", content=b'{"question": "\xff\xfe"}', headers=as_json), 400, "not UTF-8 text"),
        (httpx.post(f"{url}/v1/ask", content=b"[" * 15_000 + b"]" * 15_000, headers=as_json), 400, "nested too deeply"),
        (httpx.post(f"{url}/v1/ask", content=b"", headers=as_json), 400, "JSON object"),
        (httpx.post(f"{url}/v1/ask", json=[ARTHUR]), 400, "JSON object"),
        (httpx.post(f"{url}/v1/ask", json=ARTHUR), 400, "JSON object"),
        (httpx.post(f"{url}/v1/ask", content=b"question=x"), 400, "Content-Type: application/json"),
        (httpx.post(f"{url}/v1/ask", json={"question": "q", "model": "gpt-4"}), 404, "not served"),
        (httpx.get(f"{url}/v1/nothing"), 404, "no route"),
        (httpx.get(f"{url}/v1/ask"), 405, "no route"),
        (httpx.post(f"{url}/v1/ask", json={"question": "x" * 40_000}), 413, "larger than"),
        # chunked: no Content-Length to check up front; the limit holds while the body is read
        (httpx.post(f"{url}/v1/ask", content=(b"x" * 65_536 for _ in range(64)), headers=as_json), 413,
         "request body larger than"),
    ]
    for r, status, words in cases:
        assert r.status_code == status and words in r.json()["error"]["message"], r.text
        assert r.json()["error"]["code"] == status
    assert cases[8][0].json()["error"]["param"] == "model"
    assert "content-length" not in cases[-1][0].request.headers  # the last case really was chunked
    for name in ("onegen", None):
        body = {"question": ARTHUR} if name is None else {"question": ARTHUR, "model": name}
        assert httpx.post(f"{url}/v1/ask", json=body, timeout=60).status_code == 200


# ------------------------------------------------------------------------------------------ load limits

def test_a_full_queue_is_a_429_and_admitted_requests_still_succeed(service):
    # one request in a batch (the worker waits for the held model), one in the only queue slot: full
    with served(service, max_queue=1, max_batch_size=1) as (u, _):
        with model_held(service):
            t1, first = in_thread(httpx.post, f"{u}/v1/ask", json={"question": ARTHUR}, timeout=60)
            wait_for(lambda: engine_state(u)["running_rows"] == 1, "the first request to be in a batch")
            t2, second = in_thread(httpx.post, f"{u}/v1/ask", json={"question": DERRICKSON}, timeout=60)
            wait_for(lambda: engine_state(u)["queued"] == 1, "the second request to be queued")
            busy = httpx.post(f"{u}/v1/ask", json={"question": DERRICKSON}, timeout=30)
            streaming = httpx.post(f"{u}/v1/ask", json={"question": DERRICKSON, "stream": True}, timeout=30)
            link = httpx.post(f"{u}/v1/link", json={"text": OBAMA}, timeout=30)
            health = httpx.get(f"{u}/v1/health", timeout=30)
        t1.join(60)
        t2.join(60)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        err = busy.json()["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == 429 and "serve.max_queue = 1" in err["message"]
        assert streaming.status_code == 429 and streaming.headers["content-type"] == "application/json"
        assert link.status_code == 429  # one queue for both routes
        assert health.status_code == 200 and health.json()["engine"]["rejected"] == 3  # a full queue is not down
        # the admitted requests were never dropped for load
        assert first["r"].status_code == 200 and first["r"].json()["answer"] == "Arthur's Magazine"
        assert second["r"].status_code == 200 and second["r"].json()["answer"] == "yes"
        # and once the queue drained, the server takes requests again
        assert httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, timeout=60).status_code == 200
        state = engine_state(u)
        assert (state["rejected"], state["completed"], state["failed"]) == (3, 3, 0)


def test_a_request_past_its_deadline_is_a_504_generating_or_queued(service):
    with served(service, request_timeout_s=2.0, max_batch_size=1) as (u, app):
        jobs = record_jobs(app)
        with model_held(service):
            t1, plain = in_thread(httpx.post, f"{u}/v1/ask", json={"question": ARTHUR}, timeout=60)
            wait_for(lambda: engine_state(u)["running_rows"] == 1, "the first request to be in a batch")

            def stream():
                with httpx.stream("POST", f"{u}/v1/ask", json={"question": ARTHUR, "stream": True}, timeout=60) as s:
                    return s.status_code, sse(s)

            t2, streamed = in_thread(stream)
            wait_for(lambda: engine_state(u)["queued"] == 1, "the streaming request to be queued")
            # both deadlines pass while the model is held: one in its batch, one in the queue
            wait_for(lambda: time.monotonic() > max(j.deadline for j in jobs), "both deadlines to pass")
        t1.join(60)
        t2.join(60)
        r = plain["r"]
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
        assert "serve.request_timeout_s" in r.json()["error"]["message"]
        status, events = streamed["r"]
        assert status == 200  # the stream had started: the timeout is an error event
        assert [e for e, _ in events] == ["error", "message"] and events[-1][1] == "[DONE]"
        assert events[0][1]["error"]["code"] == 504 and events[0][1]["error"]["type"] == "timeout_error"
        state = engine_state(u)
        assert (state["timed_out"], state["completed"], state["failed"]) == (2, 0, 0)
        assert state["batches"] == 1  # the queued one was dropped without running


def _ask_result(u: str, body: dict) -> dict:
    """The ask object of a plain request, or of a stream's `done` event (checked against its tokens)."""
    if not body.get("stream"):
        r = httpx.post(f"{u}/v1/ask", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()
    with httpx.stream("POST", f"{u}/v1/ask", json=body, timeout=120) as r:
        events = sse(r)
    assert events[-2][0] == "done", events[-3:]
    res = events[-2][1]["result"]
    assert [{k: v for k, v in d.items() if k != "type"} for e, d in events if e == "retrieval"] == res["retrievals"]
    assert sum(e == "token" for e, _ in events) == res["counts"]["generated_tokens"]
    return res


def _concurrently(fn, args: list) -> list:
    runs = [in_thread(fn, *a) for a in args]
    for t, _ in runs:
        t.join(120)
    return [box["r"] for _, box in runs]


BATCH = [
    {"question": ARTHUR},
    {"question": DERRICKSON},
    {"question": "Who founded Arthur's Magazine?"},
    {"question": "Where does Scott Derrickson live?"},
    {"question": ARTHUR, "max_tokens": 3},  # its own budget inside the batch
    {"question": DERRICKSON, "top_k": 1},  # its own number of hits shown
    {"question": "Is Honolulu the capital of Hawaii?", "stream": True},
    {"question": ARTHUR, "stream": True, "top_k": 5, "max_new_tokens": 40},
]


def test_concurrent_requests_are_batched_and_equal_one_at_a_time_answers(service):
    with served(service, max_batch_size=1) as (u, _):
        alone = _concurrently(_ask_result, [(u, b) for b in BATCH])
        assert engine_state(u)["batches"] == len(BATCH)
    # the batch departs when its 8 rows are there (max_wait_ms is only a bound)
    with served(service, max_batch_size=len(BATCH), max_wait_ms=600_000) as (u, _):
        together = _concurrently(_ask_result, [(u, b) for b in BATCH])
        state = engine_state(u)
    assert [a["batch"]["rows"] for a in alone] == [1] * len(BATCH)
    assert [t["batch"]["rows"] for t in together] == [len(BATCH)] * len(BATCH)
    assert state["batches"] == 1 and state["mean_batch_rows"] == len(BATCH) and state["completed"] == len(BATCH)
    for a, b in zip(alone, together):
        assert_same_answer(a, b)
    assert together[0]["answer"] == "Arthur's Magazine" and together[1]["answer"] == "yes"
    assert together[4]["finish_reason"] == "length" and together[4]["counts"]["generated_tokens"] == 3
    assert all(len(e["hits"]) == 1 for e in together[5]["retrievals"])
    assert all(len(e["hits"]) == 5 for e in together[7]["retrievals"])


def test_concurrent_link_requests_are_batched_and_equal_one_at_a_time(service):
    def link(u: str, text: str) -> dict:
        r = httpx.post(f"{u}/v1/link", json={"text": text}, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()

    texts = [OBAMA, PARIS]
    with served(service, max_batch_size=1) as (u, _):
        alone = _concurrently(link, [(u, t) for t in texts])
    with served(service, max_batch_size=len(texts), max_wait_ms=600_000) as (u, _):
        together = _concurrently(link, [(u, t) for t in texts])
    assert [r["batch"]["rows"] for r in alone] == [1, 1] and [r["batch"]["rows"] for r in together] == [2, 2]
    def spans(res: dict) -> list:
        return [(m["start"], m["end"], m["entity"]["id"], [c["id"] for c in m["candidates"]]) for m in res["mentions"]]

    for a, b in zip(alone, together):
        assert spans(a) == spans(b) and a["counts"] == b["counts"]


# ------------------------------------------------------------------------------------------ auth

def test_with_an_api_key_every_v1_route_but_health_needs_the_bearer_token(service, caplog):
    token = "s3cr3t-0n3g3n-token"
    with caplog.at_level("DEBUG"), server(service, api_key=token) as u:
        right = {"Authorization": f"Bearer {token}"}
        no = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR})
        wrong = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, headers={"Authorization": "Bearer nope"})
        prefix = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, headers={"Authorization": f"Bearer {token}x"})
        basic = httpx.get(f"{u}/v1/info", headers={"Authorization": f"Basic {token}"})
        bare = httpx.get(f"{u}/v1/info", headers={"Authorization": token})
        link = httpx.post(f"{u}/v1/link", json={"text": OBAMA})
        stream = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR, "stream": True})
        refused = [no, wrong, prefix, basic, bare, link, stream]
        assert [r.status_code for r in refused] == [401] * len(refused)
        assert no.headers["www-authenticate"] == "Bearer" and no.json()["error"]["type"] == "authentication_error"
        assert "missing" in no.json()["error"]["message"] and "wrong" in wrong.json()["error"]["message"]
        assert stream.headers["content-type"] == "application/json"  # refused before any stream starts
        ok = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, headers=right, timeout=60)
        assert ok.status_code == 200 and ok.json()["answer"] == "Arthur's Magazine"
        lower = httpx.post(f"{u}/v1/link", json={"text": OBAMA}, headers={"Authorization": f"bearer {token}"},
                           timeout=60)
        assert lower.status_code == 200  # the scheme is case-insensitive (RFC 7235)
        with httpx.stream("POST", f"{u}/v1/ask", json={"question": ARTHUR, "stream": True}, headers=right,
                          timeout=60) as s:
            assert s.status_code == 200 and sse(s)[-1][1] == "[DONE]"
        assert httpx.get(f"{u}/v1/info", headers=right).status_code == 200
        # a refused request with the right key still refuses for its own reason, and logs nothing secret
        bad = httpx.post(f"{u}/v1/ask", json={"question": ""}, headers=right)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "question"
        health = httpx.get(f"{u}/v1/health")
        assert health.status_code == 200 and health.json()["auth"] is True  # open: load balancers probe it
        assert httpx.get(f"{u}/").status_code == 200  # the page asks for the key itself
        for r in refused + [ok, lower, bad, health]:
            assert token not in r.text and token not in str(r.headers)
    assert token not in caplog.text
    assert all(token not in str(rec.args) for rec in caplog.records)


def test_without_an_api_key_no_header_is_needed_and_loopback_is_the_default(url, service):
    from flows.cli import _parser
    from tasks.serving.app import bind_warning

    assert httpx.get(f"{url}/v1/info").status_code == 200
    # a header sent to a server without a key is ignored, whatever it holds
    assert httpx.get(f"{url}/v1/info", headers={"Authorization": "Bearer anything"}).status_code == 200
    args = _parser().parse_args(["api"])
    assert args.host is None and tiny_params({"checkpoint": "c", "index": "i"}).serve.host == "127.0.0.1"
    assert bind_warning("127.0.0.1", 8080, False, "ONEGEN_API_KEY") is None
    assert bind_warning("::1", 8080, False, "ONEGEN_API_KEY") is None
    assert bind_warning("localhost", 8080, False, "ONEGEN_API_KEY") is None
    assert bind_warning("0.0.0.0", 8080, True, "ONEGEN_API_KEY") is None
    warning = bind_warning("0.0.0.0", 8080, False, "ONEGEN_API_KEY")
    assert "without an API key" in warning and "ONEGEN_API_KEY" in warning
    assert bind_warning("example.org", 8080, False, "ONEGEN_API_KEY") is not None


# ------------------------------------------------------------------------------------------ failures

def test_a_failing_request_does_not_take_the_server_down(paths, tmp_path):
    from tasks.serving.service import ModelService

    own = tmp_path / "index"
    shutil.copytree(paths["index"], own)
    svc = ModelService(tiny_params({**paths, "index": str(own)}))
    with server(svc) as u:
        shutil.rmtree(own / "entities.lance")  # the entity table vanishes under the running server
        broken = httpx.post(f"{u}/v1/link", json={"text": OBAMA}, timeout=60)
        assert broken.status_code == 500 and broken.json()["error"]["type"] == "server_error"
        with httpx.stream("POST", f"{u}/v1/link", json={"text": OBAMA, "stream": True}, timeout=60) as s:
            events = sse(s)
        assert [e for e, _ in events] == ["error", "message"] and events[0][1]["error"]["code"] == 500
        health = httpx.get(f"{u}/v1/health")  # asking still works; linking does not, and health says why
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert "entities: unreadable" in health.json()["problems"][0]
        r = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, timeout=60)
        assert r.status_code == 200 and r.json()["answer"] == "Arthur's Magazine"
        state = engine_state(u)
        assert state["failed"] == 2 and state["completed"] == 1 and state["alive"]


def test_health_reports_a_damaged_table(paths, tmp_path):
    """Every search of a table with a unit id stored twice fails: health says so (503, the reason), where it
    used to say ok while every ask answered 500."""
    import shutil

    import numpy as np

    from tasks.adapters.lance_index import LanceIndex
    from tasks.serving.service import ModelService

    index = tmp_path / "index"
    shutil.copytree(paths["index"], index)
    units = LanceIndex(str(index), "units")
    rows = units.table.to_arrow().to_pylist()[:3]
    units.add(units.records()[:3], np.array([r["vector"] for r in rows], np.float32))  # a second writer's rows
    params = tiny_params({**paths, "index": str(index)})
    with server(ModelService(params)) as u:
        r = httpx.get(f"{u}/v1/health", timeout=30)
    assert r.status_code == 503 and r.json()["status"] == "index_damaged"
    assert "units: 3 unit ids stored more than once" in r.json()["problems"][0]
    assert "onegen index repair" in r.json()["problems"][0]


def test_a_prompt_past_the_models_context_is_a_400_naming_the_limit(url, service):
    question = " ".join(f"z{i}q" for i in range(650))  # under serve.max_text_chars, past 1,024 tokens
    assert len(question) < service.params.serve.max_text_chars
    r = httpx.post(f"{url}/v1/ask", json={"question": question}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "question"
    assert "exceed the model's context of 1024 positions" in r.json()["error"]["message"]
    ok = httpx.post(f"{url}/v1/ask", json={"question": ARTHUR}, timeout=60)
    assert ok.status_code == 200


def test_documents_added_while_the_server_runs_are_served_without_a_restart(paths, tmp_path):
    """`onegen index add` while `onegen api` runs: /v1/info reports the new version and rows, and an ask
    retrieves from them, with no restart."""
    import shutil

    import numpy as np

    from flows.cli import main
    from tasks.serving.service import ModelService
    from tests.serving.conftest import cli_options

    index = tmp_path / "index"
    shutil.copytree(paths["index"], index)
    svc = ModelService(tiny_params({**paths, "index": str(index)}))
    with server(svc) as u:
        before = httpx.get(f"{u}/v1/info", timeout=60).json()["index"]["units"]
        docs = tmp_path / "new.jsonl"
        docs.write_text(json.dumps({"id": "zeta", "title": "Zeta", "text": "Zeta is new. It came later."}) + "\n")
        main(["index", "add", str(docs), *cli_options(paths, index=str(index))])
        after = httpx.get(f"{u}/v1/info", timeout=60).json()["index"]["units"]
        assert after["rows"] == before["rows"] + 2 and after["version"] > before["version"]
        r = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, timeout=60)
        assert r.status_code == 200  # searching the new version works
        rows = {row["id"]: row["vector"] for row in svc.units.table.to_arrow().to_pylist()}
        hit = svc.units.search(np.array([rows["zeta#0"]], np.float32), 1)[0][0]
        assert hit.id == "zeta#0"  # the served search sees the new unit
