"""The API's handlers called one by one (tasks/serving/app.py `Routes`, `sse_events`, the error handlers),
over a stand-in service and engine: no checkpoint is loaded, so each answer can be asserted exactly.
test_service_api.py runs the same routes over the tiny trained model."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

pytest.importorskip("fastapi")


class FakeService:
    checkpoint_id = "ck-123"
    checkpoint = "/models/ck"
    entities = None

    def info(self) -> dict:
        return {"checkpoint": self.checkpoint}

    def index_problems(self) -> dict[str, str]:
        return {}


class FakeEngine:
    def __init__(self, alive: bool = True) -> None:
        self.alive = alive
        self.closed = False

    def status(self) -> dict:
        return {"alive": self.alive, "queued": 0}

    def close(self) -> None:
        self.closed = True


def routes(api_key=None, engine=None):
    from tasks.serving.app import Routes
    from tests.serving.conftest import tiny_params

    cfg = tiny_params({"checkpoint": "c", "index": "i"}).serve
    return Routes(FakeService(), cfg, api_key, engine or FakeEngine())


def body(response) -> dict:
    return json.loads(response.body)


def test_health_says_ok_while_the_engine_runs_and_503_after():
    r = asyncio.run(routes(api_key="k").health())
    assert r.status_code == 200
    assert body(r) == {"status": "ok", "model": "ck-123", "link": False, "auth": True,
                       "engine": {"alive": True, "queued": 0}, "problems": []}
    r = asyncio.run(routes(engine=FakeEngine(alive=False)).health())
    assert r.status_code == 503 and body(r)["status"] == "unavailable" and body(r)["auth"] is False


def test_info_adds_the_engine_state_to_the_service_info():
    r = asyncio.run(routes().info())
    assert body(r) == {"checkpoint": "/models/ck", "engine": {"alive": True, "queued": 0}}


def test_the_model_field_must_name_the_served_checkpoint():
    from tasks.serving.app import ModelNotServed

    rt = routes()
    for name in (None, "onegen", "ck-123", "/models/ck"):
        rt.check_model(name)
    with pytest.raises(ModelNotServed):
        rt.check_model("gpt-4")
    r = asyncio.run(rt.unknown_model(None, ModelNotServed("gpt-4")))
    assert r.status_code == 404
    assert body(r) == {"error": {"message": "model 'gpt-4' is not served here; this server serves checkpoint ck-123 "
                                            "(/models/ck)", "type": "not_found_error", "param": "model", "code": 404}}


def test_the_engine_stops_when_the_app_shuts_down():
    engine = FakeEngine()
    rt = routes(engine=engine)

    async def lifetime() -> None:
        async with rt.lifespan(None):
            assert not engine.closed
    asyncio.run(lifetime())
    assert engine.closed


def test_a_stream_is_framed_as_server_sent_events_then_done():
    from tasks.serving.app import sse_events
    from tasks.serving.batching import Job
    from tests.serving.conftest import tiny_params

    cfg = tiny_params({"checkpoint": "c", "index": "i"}).serve
    job = Job("ask", None, 1, (), time.monotonic() + 60)

    async def collect() -> list[str]:
        queue: asyncio.Queue = asyncio.Queue()
        for ev in ({"type": "token", "text": "é"}, {"type": "done", "result": {"answer": "x"}}):
            queue.put_nowait(ev)
        return [chunk async for chunk in sse_events(queue, job, lambda r: {**r, "shaped": True}, cfg)]

    assert asyncio.run(collect()) == [
        'event: token\ndata: {"type": "token", "text": "é"}\n\n',
        'event: done\ndata: {"type": "done", "result": {"answer": "x", "shaped": true}}\n\n',
        "data: [DONE]\n\n",
    ]
    assert job.cancelled.is_set()  # a finished job's cancel is a no-op; a left client's stops its row


def test_a_failure_mid_stream_is_an_error_event_in_the_error_shape():
    from tasks.serving.app import sse_events
    from tasks.serving.batching import Job, RequestTimeout
    from tests.serving.conftest import tiny_params

    cfg = tiny_params({"checkpoint": "c", "index": "i"}, request_timeout_s=2.5).serve
    job = Job("link", None, 1, (), time.monotonic() + 60)

    async def collect() -> list[str]:
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait({"type": "error", "error": RequestTimeout("late")})
        return [chunk async for chunk in sse_events(queue, job, lambda r: r, cfg)]

    error = {"type": "error", "error": {"message": "the request took longer than 2.5 s (serve.request_timeout_s)",
                                        "type": "timeout_error", "param": None, "code": 504}}
    assert asyncio.run(collect()) == [f"event: error\ndata: {json.dumps(error)}\n\n", "data: [DONE]\n\n"]


def test_the_app_answers_routes_auth_and_bad_bodies_in_the_error_shape():
    from fastapi.testclient import TestClient

    from tasks.serving.app import create_app
    from tests.serving.conftest import tiny_params

    pytest.importorskip("httpx")
    cfg = tiny_params({"checkpoint": "c", "index": "i"}).serve
    with TestClient(create_app(FakeService(), cfg, api_key="secret-key", engine=FakeEngine())) as client:
        assert client.get("/v1/health").json()["model"] == "ck-123"  # no key needed
        assert client.get("/favicon.ico").status_code == 204
        page = client.get("/")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
        r = client.get("/v1/info")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
        auth = {"Authorization": "Bearer secret-key"}
        r = client.get("/v1/nowhere", headers=auth)
        assert r.json() == {"error": {"message": "no route GET /v1/nowhere", "type": "not_found_error",
                                      "param": None, "code": 404}}
        r = client.post("/v1/ask", json={"question": "q", "model": "gpt-4"}, headers=auth)
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"
        r = client.post("/v1/ask", json={"question": "q", "max_tokenz": 3}, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokenz"
        assert r.json()["error"]["message"].startswith("max_tokenz: unknown field (known: ")
        r = client.post("/v1/ask", content="question=q", headers={**auth, "Content-Type": "text/plain"})
        assert r.status_code == 400 and "Content-Type: application/json" in r.json()["error"]["message"]
