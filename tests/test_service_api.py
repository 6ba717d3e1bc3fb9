"""`onegen api` over HTTP: a real uvicorn server (in a thread, on 127.0.0.1) in front of the tiny trained
checkpoint and its LanceDB index, driven with httpx. Happy paths and their JSON shapes, server-sent
events, a 4xx naming the field for each bad field, 429 on a full queue, 504 past the deadline, auth on
and off, batched answers equal to one-at-a-time answers, and a request that fails without taking the
server down."""
from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from tests.test_service_support import ARTHUR, DERRICKSON, OBAMA, PARIS, one_thread, tiny_params, tiny_project

httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    with one_thread():
        return tiny_project(tmp_path_factory)


@pytest.fixture(scope="module")
def service(paths):
    from tasks.serving.service import ModelService

    return ModelService(tiny_params(paths))


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def server(service, api_key=None, **serve):
    """A running server over `service` with these serve.* settings (context manager yielding its URL)."""
    from tasks.serving.app import create_app, serve_in_thread

    cfg = tiny_params({"checkpoint": service.checkpoint, "index": service.index_uri}, **serve).serve
    return serve_in_thread(create_app(service, cfg, api_key=api_key))


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


# ------------------------------------------------------------------------------------------ happy paths

def test_ask_returns_the_answer_its_retrievals_and_counts(url, service):
    r = httpx.post(f"{url}/v1/ask", json={"question": ARTHUR, "top_k": 2}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "question", "answer", "text", "retrievals",
                         "finish_reason", "counts", "batch"}
    assert body["object"] == "ask" and body["model"] == service.checkpoint_id and body["id"].startswith("ask-")
    assert body["answer"] == "Arthur's Magazine" and body["finish_reason"] == "eos"
    assert [len(e["hits"]) for e in body["retrievals"]] == [2, 2]
    assert set(body["counts"]) == {"prompt_tokens", "generated_tokens", "pasted_tokens", "retrievals"}
    assert set(body["batch"]) == {"rows", "forward_passes", "searches", "seconds", "queue_ms"}


def test_link_returns_spans_entities_and_the_elevant_shape(url):
    r = httpx.post(f"{url}/v1/link", json={"text": OBAMA, "top_k": 2}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "link" and body["counts"]["mentions"] == 2
    m = body["mentions"][0]
    assert (m["start"], m["end"], m["text"]) == (0, 5, "Obama") and m["entity"]["id"] == "Q76"
    assert set(m["entity"]) == {"id", "title", "score"} and len(m["candidates"]) == 2
    art = httpx.post(f"{url}/v1/link", json={"text": OBAMA, "format": "elevant"}, timeout=60).json()
    assert list(art) == ["id", "title", "text", "entity_mentions", "evaluation_span", "labels"]
    assert art["entity_mentions"][1]["span"] == [18, 26] and art["entity_mentions"][1]["id"] == "Q18094"


def test_health_and_info(url, service):
    h = httpx.get(f"{url}/v1/health").json()
    assert h["status"] == "ok" and h["model"] == service.checkpoint_id and h["engine"]["alive"] and h["link"]
    info = httpx.get(f"{url}/v1/info").json()
    assert info["model"]["checkpoint_id"] == service.checkpoint_id
    assert info["index"]["units"]["rows"] == 10 and info["index"]["entities"]["rows"] == 5
    assert info["index"]["units"]["checkpoint_id"] == service.checkpoint_id
    assert info["defaults"]["ask"]["max_tokens"] == 48 and info["limits"]["max_queue"] == 64


def test_the_web_page_is_served_at_the_root(url):
    r = httpx.get(f"{url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="question"' in r.text and 'id="link-text"' in r.text and "/v1/ask" in r.text


# ------------------------------------------------------------------------------------------ streaming

def test_ask_streams_tokens_and_retrievals_then_the_final_object(url):
    with httpx.stream("POST", f"{url}/v1/ask", json={"question": ARTHUR, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    kinds = [e for e, _ in events]
    assert kinds[0] == "token" and kinds[1] == "retrieval" and kinds[-2:] == ["done", "message"]
    assert events[-1][1] == "[DONE]" and kinds.count("retrieval") == 2
    done = events[-2][1]["result"]
    assert "".join(d["text"] for e, d in events if e == "token").endswith("<FINAL-ANSWER>Arthur's Magazine</FINAL-ANSWER>")
    assert [{k: v for k, v in d.items() if k != "type"} for e, d in events if e == "retrieval"] == done["retrievals"]
    plain = httpx.post(f"{url}/v1/ask", json={"question": ARTHUR}, timeout=60).json()
    assert (plain["text"], plain["answer"]) == (done["text"], done["answer"])


def test_link_streams_each_mention_as_it_is_linked(url):
    with httpx.stream("POST", f"{url}/v1/link", json={"text": PARIS, "stream": True}, timeout=60) as r:
        events = sse(r)
    mentions = [d for e, d in events if e == "mention"]
    assert [(m["text"], m["entity"]["id"]) for m in mentions] == [("Paris", "Q90"), ("France", "Q142")]
    assert events[-2][0] == "done" and events[-1][1] == "[DONE]"


def test_a_client_that_leaves_mid_stream_stops_its_rows(service):
    text = (OBAMA + " ") * 40  # two windows: long enough to leave while they are generated
    with server(service) as u:
        with httpx.stream("POST", f"{u}/v1/link", json={"text": text, "stream": True}, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("event: mention"):
                    break  # the first mention arrived: hang up
        deadline = time.monotonic() + 30
        while (engine := httpx.get(f"{u}/v1/health").json()["engine"])["cancelled"] == 0:
            assert engine["completed"] == 0, "the rows ran to the end after the client left"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert engine["failed"] == 0
        assert httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, timeout=60).json()["answer"] == "Arthur's Magazine"


# ------------------------------------------------------------------------------------------ bad requests

BAD_ASK = [
    ({}, "question"),
    ({"question": ""}, "question"),
    ({"question": 7}, "question"),
    ({"question": "x" * 5000}, "question"),
    ({"question": "Is <MENTION> a token?"}, "question"),
    ({"question": "q", "max_tokens": 0}, "max_tokens"),
    ({"question": "q", "max_tokens": 100000}, "max_tokens"),
    ({"question": "q", "max_new_tokens": "5"}, "max_new_tokens"),
    ({"question": "q", "top_k": 0}, "top_k"),
    ({"question": "q", "top_k": 21}, "top_k"),
    ({"question": "q", "max_retrievals": -1}, "max_retrievals"),
    ({"question": "q", "temperature": -1}, "temperature"),
    ({"question": "q", "top_p": 1.5}, "top_p"),
    ({"question": "q", "seed": "s"}, "seed"),
    ({"question": "q", "stream": "yes"}, "stream"),
    ({"question": "q", "max_token": 5}, "max_token"),
]


@pytest.mark.parametrize("body, param", BAD_ASK, ids=[p for _, p in BAD_ASK])
def test_a_bad_ask_field_is_a_400_naming_it(url, body, param):
    r = httpx.post(f"{url}/v1/ask", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"] and err["code"] == 400
    assert err["type"] == "invalid_request_error"


BAD_LINK = [({}, "text"), ({"text": "   "}, "text"), ({"text": "a", "format": "xml"}, "format"),
            ({"text": "a", "max_retrievals": 0}, "max_retrievals"), ({"text": "a", "top_k": 1.5}, "top_k")]


@pytest.mark.parametrize("body, param", BAD_LINK, ids=[p for _, p in BAD_LINK])
def test_a_bad_link_field_is_a_400_naming_it(url, body, param):
    r = httpx.post(f"{url}/v1/link", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_malformed_bodies_unknown_models_routes_and_oversized_bodies(url):
    cases = [
        (httpx.post(f"{url}/v1/ask", content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON"),
        (httpx.post(f"{url}/v1/ask", json=[ARTHUR]), 400, "JSON object"),
        (httpx.post(f"{url}/v1/ask", content=b"question=x"), 400, "Content-Type: application/json"),
        (httpx.post(f"{url}/v1/ask", json={"question": "q", "model": "gpt-4"}), 404, "not served"),
        (httpx.get(f"{url}/v1/nothing"), 404, "no route"),
        (httpx.get(f"{url}/v1/ask"), 405, "no route"),
        (httpx.post(f"{url}/v1/ask", json={"question": "x" * 40_000}), 413, "larger than"),
    ]
    for r, status, words in cases:
        assert r.status_code == status and words in r.json()["error"]["message"], r.text
        assert r.json()["error"]["code"] == status
    assert httpx.post(f"{url}/v1/ask", json={"question": ARTHUR, "model": "onegen"}, timeout=60).status_code == 200


# ------------------------------------------------------------------------------------------ load limits

def test_a_full_queue_is_a_429_and_admitted_requests_still_succeed(service):
    # the first request waits up to 1.5 s for others to join its batch: it holds the only queue slot
    with server(service, max_queue=1, max_batch_size=4, max_wait_ms=1500) as u:
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=httpx.post(f"{u}/v1/ask", json={"question": ARTHUR},
                                                                       timeout=60)))
        t.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{u}/v1/health").json()["engine"]["queued"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        busy = httpx.post(f"{u}/v1/ask", json={"question": DERRICKSON}, timeout=30)
        streaming = httpx.post(f"{u}/v1/ask", json={"question": DERRICKSON, "stream": True}, timeout=30)
        t.join(60)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "rate_limit_error"
        assert streaming.status_code == 429  # refused before the stream starts, with a status code
        assert first["r"].status_code == 200 and first["r"].json()["answer"] == "Arthur's Magazine"
        assert httpx.get(f"{u}/v1/health").json()["engine"]["rejected"] == 2


def test_a_request_past_its_deadline_is_a_504(service):
    # the request is still waiting for its batch (5 s) when its 0.3 s deadline passes
    with server(service, request_timeout_s=0.3, max_batch_size=4, max_wait_ms=5000) as u:
        r = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, timeout=30)
        assert r.status_code == 504 and "serve.request_timeout_s" in r.json()["error"]["message"]
        with httpx.stream("POST", f"{u}/v1/ask", json={"question": ARTHUR, "stream": True}, timeout=30) as s:
            events = sse(s)
        assert events[0][0] == "error" and events[0][1]["error"]["code"] == 504 and events[-1][1] == "[DONE]"


def test_concurrent_requests_are_batched_and_equal_one_at_a_time_answers(service):
    from tests.test_service_engine import assert_same_answer

    questions = [ARTHUR, DERRICKSON, "Who founded Arthur's Magazine?"]
    with server(service, max_batch_size=1) as u:
        alone = [httpx.post(f"{u}/v1/ask", json={"question": q}, timeout=60).json() for q in questions]
    with server(service, max_batch_size=3, max_wait_ms=2000) as u:
        out: dict[int, httpx.Response] = {}
        threads = [threading.Thread(target=lambda i=i, q=q: out.update({i: httpx.post(f"{u}/v1/ask",
                                                                                     json={"question": q}, timeout=60)}))
                   for i, q in enumerate(questions)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    together = [out[i].json() for i in range(len(questions))]
    assert [a["batch"]["rows"] for a in alone] == [1, 1, 1] and [t["batch"]["rows"] for t in together] == [3, 3, 3]
    for a, b in zip(alone, together):
        assert_same_answer(a, b)


# ------------------------------------------------------------------------------------------ auth

def test_with_an_api_key_every_v1_route_but_health_needs_the_bearer_token(service, caplog):
    token = "s3cr3t-0n3g3n-token"
    with server(service, api_key=token) as u, caplog.at_level("DEBUG"):
        no = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR})
        wrong = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, headers={"Authorization": "Bearer nope"})
        basic = httpx.get(f"{u}/v1/info", headers={"Authorization": f"Basic {token}"})
        ok = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, headers={"Authorization": f"Bearer {token}"},
                        timeout=60)
        assert [r.status_code for r in (no, wrong, basic)] == [401, 401, 401]
        assert no.headers["www-authenticate"] == "Bearer" and no.json()["error"]["type"] == "authentication_error"
        assert ok.status_code == 200 and ok.json()["answer"] == "Arthur's Magazine"
        assert httpx.get(f"{u}/v1/health").json()["auth"] is True  # open: load balancers probe it
        assert httpx.get(f"{u}/").status_code == 200  # the page asks for the key itself
        assert httpx.get(f"{u}/v1/info", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        for r in (no, wrong, basic, ok):
            assert token not in r.text
    assert token not in caplog.text


def test_without_an_api_key_no_header_is_needed_and_loopback_is_the_default(url, service):
    from flows.cli import _parser
    from tasks.serving.app import bind_warning

    assert httpx.get(f"{url}/v1/info").status_code == 200
    args = _parser().parse_args(["api"])
    assert args.host is None and tiny_params({"checkpoint": "c", "index": "i"}).serve.host == "127.0.0.1"
    assert bind_warning("127.0.0.1", 8080, False, "ONEGEN_API_KEY") is None
    assert bind_warning("::1", 8080, False, "ONEGEN_API_KEY") is None
    assert bind_warning("0.0.0.0", 8080, True, "ONEGEN_API_KEY") is None
    warning = bind_warning("0.0.0.0", 8080, False, "ONEGEN_API_KEY")
    assert "without an API key" in warning and "ONEGEN_API_KEY" in warning


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
        assert httpx.get(f"{u}/v1/health").json()["status"] == "ok"
        r = httpx.post(f"{u}/v1/ask", json={"question": ARTHUR}, timeout=60)
        assert r.status_code == 200 and r.json()["answer"] == "Arthur's Magazine"
        assert httpx.get(f"{u}/v1/health").json()["engine"]["failed"] == 1
