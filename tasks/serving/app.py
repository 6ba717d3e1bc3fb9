"""The HTTP API of `onegen api` (FastAPI) and the web page at `/`.

Routes: `POST /v1/ask`, `POST /v1/link` (JSON in, JSON out; `"stream": true` answers with server-sent
events), `GET /v1/health`, `GET /v1/info`, and `GET /` (tasks/serving/webui/index.html: plain HTML and JS).

Conventions follow vLLM / OpenAI where the issue is silent:
- request fields `max_tokens` (alias `max_new_tokens`), `temperature` (0 = greedy, the default),
  `top_p`, `seed`, `stream`, optional `model`; unknown fields are refused (a typo is not ignored);
- every error is `{"error": {"message", "type", "param", "code"}}` with `param` naming the field and
  `code` the HTTP status: 400 for a bad request (also for what FastAPI would answer 422: vLLM's
  choice), 401 without the bearer token, 404 unknown route or model, 413 oversized body, 429 full queue
  (with Retry-After), 503 engine down, 504 deadline passed, 500 anything else (the server stays up);
- streams are `event: <type>` + `data: <json>` records (`token`, `retrieval`, `mention`, `done`, `error`),
  ended by `data: [DONE]`; a `: ping` comment every 15 s keeps idle connections open. Errors found
  before a stream starts get their status code; after, an `error` event.
The bearer token is read from the environment variable `serve.api_key_env` once at start and compared in
constant time; it is never logged, echoed or written anywhere.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from onegen_core.config import ServeConfig
from tasks.serving import openai_api
from tasks.serving.batching import BatchingEngine, EngineStopped, Job, QueueFull, RequestCancelled, RequestTimeout
from tasks.serving.http_limits import HEADER_TIMEOUT_S, MAX_HEADER_BYTES, MAX_HEADERS, server_config
from tasks.serving.service import InvalidRequest, ModelService, elevant_article

log = logging.getLogger("onegen.serve")
WEBUI = Path(__file__).resolve().parent / "webui" / "index.html"
PING_SECONDS = 15.0
_STATUS_TYPE = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
                431: "invalid_request_error", 429: "rate_limit_error",
                499: "client_closed_request", 500: "server_error", 503: "service_unavailable_error",
                504: "timeout_error"}


# ------------------------------------------------------------------------------------------ bodies

class _Body(BaseModel):
    # strict: "5" is not 5 and "true" is not true; forbid: a misspelt field is an error, not a default
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="optional; must name the served checkpoint (its id or path) or 'onegen'")
    stream: bool = Field(False, description="server-sent events as they happen instead of one JSON object")
    top_k: int | None = Field(None, description="hits shown per [RQ] (ask) or candidates per mention (link)")
    max_retrievals: int | None = Field(None, description="[RQ] cap per question (ask) or per window (link)")


class AskBody(_Body):
    question: str = Field(description="the question, plain text")
    max_tokens: int | None = Field(None, validation_alias=AliasChoices("max_tokens", "max_new_tokens"),
                                   description="tokens the model may sample (passages pasted back excluded)")
    temperature: float | None = Field(None, description="0 (default) = greedy; > 0 samples")
    top_p: float | None = Field(None, description="nucleus sampling mass, (0, 1]")
    seed: int | None = Field(None, description="seed of the sampler (requests batched together share it)")
    stop: str | list[str] | None = Field(None, description="up to 4 strings that end the answer where the model "
                                                           "writes one (not returned)")


class LinkBody(_Body):
    text: str = Field(description="the text whose entity mentions are marked and linked")
    format: Literal["onegen", "elevant"] = Field("onegen", description="'elevant': the ELEVANT linked-article shape")


# ------------------------------------------------------------------------------------------ errors

class ModelNotServed(LookupError):
    """The request's `model` names another model (404, as vLLM answers an unknown model)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def error_body(status: int, message: str, param: str | None = None, type_: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_ or _STATUS_TYPE.get(status, "server_error"),
                      "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None, type_: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, type_), status_code=status, headers=headers)


def _validation_message(errors: list[dict], known: dict[str, list[str]], path: str) -> tuple[str | None, str]:
    """(param, message) of pydantic errors, naming the field the way a client wrote it."""
    parts, first = [], None
    for e in errors:
        # a union's member is named in the location (`stop.str`, `stop.list[str]`): drop it, name the field
        loc = [str(x) for x in e.get("loc", ()) if x != "body" and not _UNION_TAG.fullmatch(str(x))]
        kind = e.get("type", "")
        if kind == "json_invalid":
            return None, f"the request body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})"
        if not loc or kind in ("model_attributes_type", "dict_type", "model_type"):
            return None, "the request body must be a JSON object"
        param = ".".join(loc)  # an aliased field is named as the client spelt it (max_new_tokens)
        first = first or param
        if kind == "missing":
            parts.append(f"{param}: field required")
        elif kind == "extra_forbidden" and param in known.get(path, []):
            # a field given under two of its names (max_tokens and max_new_tokens): pydantic calls one extra
            names = next((g for g in _ALIASES if param in g), (param,))
            parts.append(f"{param}: the same field as {' / '.join(n for n in names if n != param)}; send only one of "
                         f"{', '.join(names)}")
        elif kind == "extra_forbidden":
            parts.append(f"{param}: unknown field (known: {', '.join(known.get(path, []))})")
        else:
            parts.append(f"{param}: {e.get('msg', 'invalid')}")
    return first, "; ".join(dict.fromkeys(parts)) or "invalid request"


_UNION_TAG = re.compile(r"str|int|float|bool|none|list|dict|[a-z-]+\[.*\]")


def _alias_groups(*models: type[BaseModel]) -> list[tuple[str, ...]]:
    return [tuple(f.validation_alias.choices) for m in models for f in m.model_fields.values()
            if isinstance(f.validation_alias, AliasChoices)]


def _known_fields(model: type[BaseModel]) -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        alias = f.validation_alias
        out += list(alias.choices) if isinstance(alias, AliasChoices) else [name]
    return sorted(out)


_ALIASES = _alias_groups(AskBody, LinkBody, openai_api.ChatCompletionBody, openai_api.CompletionBody)


# ------------------------------------------------------------------------------------------ middleware

def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def bind_warning(host: str, port: int, has_key: bool, key_env: str) -> str | None:
    """The warning `onegen api` prints when it would serve beyond this machine with no API key."""
    if is_loopback(host) or has_key:
        return None
    return (f"binding {host}, beyond this machine, without an API key: anyone who can reach port {port} can use "
            f"the model; set the environment variable {key_env or '(serve.api_key_env)'} to require a bearer token")


class Guard:
    """ASGI middleware in front of every route: the bearer token (when one is configured) on /v1/*
    except /v1/health, and the body size, before any body is read or parsed."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, body_timeout_s: float = 60.0) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers") or []
        # h11 bounds a head that arrives in pieces; one that arrives whole is measured here
        head_bytes = sum(len(k) + len(v) + 4 for k, v in raw_headers) + len(scope.get("raw_path") or b"") + len(
            scope.get("query_string") or b"")
        if len(raw_headers) > MAX_HEADERS or head_bytes > MAX_HEADER_BYTES:
            resp = error_response(431, f"request head of {len(raw_headers)} headers and {head_bytes} bytes: more than "
                                       f"{MAX_HEADERS} headers or {MAX_HEADER_BYTES} bytes")
            await resp(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if self.api_key is not None and path.startswith("/v1/") and path != "/v1/health":
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                why = "missing" if not token else "wrong"
                resp = error_response(401, f"{why} API key: send 'Authorization: Bearer <key>' (the key of the "
                                           f"server's environment variable)", None,
                                      headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            resp = error_response(413, f"request body of {int(length)} bytes is larger than {self.max_body_bytes} "
                                       f"(serve.max_text_chars bounds the text)")
            await resp(scope, receive, send)
            return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            # a chunked body declares no length: the limit is enforced while reading, before anything parses it
            body = await self._bounded_body(receive)
            if body is None:  # the client went away mid-body
                return
            if body is _STALLED:
                resp = error_response(408, f"the request body stopped arriving (nothing for {self.body_timeout_s:g} s; "
                                           f"serve.request_timeout_s)")
                await resp(scope, receive, send)
                return
            if isinstance(body, int):
                resp = error_response(413, f"request body larger than {self.max_body_bytes} bytes (stopped reading "
                                           f"at {body}; serve.max_text_chars bounds the text)")
                await resp(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _bounded_body(self, receive) -> bytes | int | object | None:
        """The whole body, or the byte count at which it passed the limit, or None on a disconnect, or
        _STALLED when no part of it came for `body_timeout_s` (a client that sent its head and stopped)."""
        chunks, total = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                return _STALLED
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                return total
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


_STALLED = object()


def _replay(body: bytes, receive):
    """An ASGI `receive` that hands the app the body already read, then the connection's own events (a
    disconnect, which streaming answers watch for)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


# ------------------------------------------------------------------------------------------ the app

def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _timeout_message(cfg: ServeConfig) -> str:
    return f"the request took longer than {cfg.request_timeout_s:g} s (serve.request_timeout_s)"


# handlers that need nothing but the request and the error

async def refused(request: Request, exc: InvalidRequest) -> JSONResponse:
    """A request the service refuses (a bad value, an oversized text): 400 naming the field."""
    return error_response(400, exc.message, exc.param)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method, unparsable body) in the vLLM error shape."""
    message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    if exc.status_code == 400 and message == "There was an error parsing the body":  # FastAPI says no more
        message = await why_unparsable(request)
    return error_response(exc.status_code, message, None, headers=getattr(exc, "headers", None))


async def why_unparsable(request: Request) -> str:
    """What is wrong with a body FastAPI could not parse: not UTF-8, not JSON, or nested past the parser's
    recursion limit (a 15,000-deep array), said as such rather than as one catch-all."""
    fallback = "the request body is not valid JSON (it must be UTF-8 text)"
    try:
        raw = await request.body()  # kept by Starlette (and bounded by the Guard) once read
    except Exception:  # noqa: BLE001 (the connection went away: the catch-all is all there is to say)
        return fallback
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"the request body is not UTF-8 text (byte {e.start})"
    try:
        json.loads(text)
    except RecursionError:
        return "the request body is nested too deeply to parse (JSON arrays or objects inside each other)"
    except ValueError as e:
        return f"the request body is not valid JSON ({e})"
    return fallback


async def crash(request: Request, exc: Exception) -> JSONResponse:
    """Anything else: logged with its traceback, answered 500; the server keeps running."""
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(500, f"internal error ({type(exc).__name__}); the server keeps running")


async def favicon() -> Response:
    return Response(status_code=204)


class Routes:
    """The API's handlers over one model service and its batching engine (`create_app` registers them;
    a test can call any of them). Each request becomes a `Job` for the engine; a plain request waits for
    its result, a streaming one forwards the engine's events as server-sent events."""

    def __init__(self, service: ModelService, cfg: ServeConfig, api_key: str | None, engine: BatchingEngine) -> None:
        self.service, self.cfg, self.api_key, self.engine = service, cfg, api_key, engine
        self.page = WEBUI.read_text(encoding="utf-8")
        # what a request's `model` may say: the checkpoint's id, its path as given or resolved, or 'onegen'
        self.served_names = {service.checkpoint_id, service.checkpoint, str(Path(service.checkpoint).resolve()),
                             "onegen"}
        self.known = {"/v1/ask": _known_fields(AskBody), "/v1/link": _known_fields(LinkBody),
                      "/v1/chat/completions": _known_fields(openai_api.ChatCompletionBody),
                      "/v1/completions": _known_fields(openai_api.CompletionBody)}

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """The engine runs from the start; it stops (its worker joined) when the app shuts down."""
        yield
        await run_in_threadpool(self.engine.close)

    # ---------------------------------------------------------------- errors that need the service

    async def invalid(self, request: Request, exc: RequestValidationError) -> JSONResponse:
        """What FastAPI would answer 422: 400 (vLLM's choice) naming the field as the client spelt it."""
        if "json" not in request.headers.get("content-type", ""):
            return error_response(400, "send the request body as a JSON object with 'Content-Type: application/json'")
        param, message = _validation_message(list(exc.errors()), self.known, request.url.path)
        return error_response(400, message, param)

    async def unknown_model(self, request: Request, exc: ModelNotServed) -> JSONResponse:
        return error_response(404, f"model {exc.name!r} is not served here; this server serves checkpoint "
                                   f"{self.service.checkpoint_id} ({self.service.checkpoint})", "model")

    def check_model(self, name: str | None) -> None:
        if name is not None and name not in self.served_names:
            raise ModelNotServed(name)

    # ---------------------------------------------------------------- routes

    async def ask(self, body: AskBody, request: Request) -> Response:
        self.check_model(body.model)
        opts = self.service.ask_options(body.max_tokens, body.max_retrievals, body.top_k, body.temperature,
                                        body.top_p, body.seed, body.stop)
        item = self.service.ask_input(body.question, opts)
        return await self.submit(request, "ask", item, 1, opts.batch_key(), body.stream, opts.temperature == 0,
                                 lambda r: r)

    async def link(self, body: LinkBody, request: Request) -> Response:
        self.check_model(body.model)
        opts = self.service.link_options(body.top_k, body.max_retrievals)
        item = self.service.link_input(body.text, opts)
        shape = (lambda r: elevant_article(r)) if body.format == "elevant" else (lambda r: r)
        return await self.submit(request, "link", item, max(1, len(item.windows)), opts.batch_key(), body.stream,
                                 True, shape)

    async def health(self) -> JSONResponse:
        status = self.engine.status()
        # a damaged passage table fails every ask (503); a damaged entity table only `link` (200, degraded)
        problems = await run_in_threadpool(self.service.index_problems)
        ok = status["alive"] and "units" not in problems
        state = ("unavailable" if not status["alive"] else "index_damaged" if "units" in problems
                 else "degraded" if problems else "ok")
        return JSONResponse({"status": state, "model": self.service.checkpoint_id,
                             "link": self.service.entities is not None, "auth": self.api_key is not None,
                             "engine": status, "problems": list(problems.values())},
                            status_code=200 if ok else 503)

    async def info(self) -> JSONResponse:
        data = await run_in_threadpool(self.service.info)
        data["engine"] = self.engine.status()
        return JSONResponse(data)

    async def index_page(self) -> HTMLResponse:
        return HTMLResponse(self.page, headers={"Cache-Control": "no-cache"})

    # ---------------------------------------------------------------- one request through the engine

    async def submit(self, request: Request, kind: str, item: Any, rows: int, key: tuple, stream: bool,
                     replayable: bool, shape: Callable[[dict], dict], events: EventStream | None = None) -> Response:
        """Queue one request as a `Job` of `rows` engine rows (its deadline starts now): 429 when the queue
        is full, 503 when the engine stopped; then its answer as one JSON object, or as a stream of events
        (`shape` turns the service's result into the response's; `events` writes the stream, by default
        this API's own `sse_events`)."""
        deadline = time.monotonic() + self.cfg.request_timeout_s
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        sink = (lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev)) if stream else None
        job = Job(kind, item, rows, key, deadline, sink=sink, replayable=replayable)
        try:
            self.engine.submit(job)
        except QueueFull as e:
            return error_response(429, f"the server is busy: {e}; retry shortly", None, headers={"Retry-After": "1"})
        except EngineStopped as e:
            return error_response(503, str(e), None, headers={"Retry-After": "5"})
        if not stream:
            return await self.answer(request, job, shape)
        return StreamingResponse((events or sse_events)(queue, job, shape, self.cfg), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def answer(self, request: Request, job: Job, shape: Callable[[dict], dict]) -> Response:
        """Wait for a plain request's result; a client that leaves stops it (499), so does the deadline (504)."""
        cfg = self.cfg
        waiter = asyncio.ensure_future(asyncio.wrap_future(job.future))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            # the engine enforces the deadline; the grace covers a batch that is slow to stop
            done, _ = await asyncio.wait({waiter, gone}, timeout=cfg.request_timeout_s + 5.0,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            job.cancel()
            raise
        finally:
            gone.cancel()
        if waiter not in done:
            job.cancel()  # its row stops before its next token, or it leaves the queue
            waiter.cancel()
            if gone in done:  # nobody reads this answer
                return error_response(499, "the client closed the connection; its request was stopped")
            return error_response(504, _timeout_message(cfg))
        try:
            result = waiter.result()
        except RequestTimeout:
            return error_response(504, _timeout_message(cfg))
        except RequestCancelled as e:
            return error_response(503, str(e))
        except InvalidRequest as e:
            return error_response(400, e.message, e.param)
        except EngineStopped as e:
            return error_response(503, str(e), headers={"Retry-After": "5"})
        except Exception as e:  # noqa: BLE001 - this request failed; the server goes on
            log.error("%s request failed: %s: %s", job.kind, type(e).__name__, e)
            return error_response(500, f"generation failed ({type(e).__name__}: {e})")
        return JSONResponse(shape(result))


EventStream = Callable[[asyncio.Queue, Job, Callable[[dict], dict], ServeConfig], AsyncIterator[str]]


async def engine_events(queue: asyncio.Queue, job: Job) -> AsyncIterator[dict | None]:
    """The engine's events of one streaming job as they come, `None` whenever it has been silent for
    PING_SECONDS (a stream writes a keep-alive comment then); ends after `done` or `error`. The job is
    cancelled when it ends (a consumer that stops early cancels it too: see `sse_events`)."""
    try:
        while True:
            try:
                ev = await asyncio.wait_for(queue.get(), PING_SECONDS)
            except TimeoutError:
                yield None
                continue
            yield ev
            if ev["type"] in ("done", "error"):
                break
    finally:
        job.cancel()  # no-op when finished; stops the row when the client went away


async def sse_events(queue: asyncio.Queue, job: Job, shape: Callable[[dict], dict],
                     cfg: ServeConfig) -> AsyncIterator[str]:
    """The server-sent events of a streaming request: each engine event as `event: <type>` + `data:
    <json>`, the result shaped in `done`, a failure as `error`, then `data: [DONE]`; a `: ping` comment
    whenever the engine is silent for PING_SECONDS. The job is cancelled when the stream ends, so a
    client that goes away stops its row."""
    try:
        async for ev in engine_events(queue, job):
            if ev is None:
                yield ": ping\n\n"
            elif ev["type"] == "done":
                yield _sse("done", {"type": "done", "result": shape(ev["result"])})
            elif ev["type"] == "error":
                yield _sse("error", {"type": "error", **stream_error(ev["error"], cfg)})
            else:
                yield _sse(ev["type"], ev)
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # at once when the client goes away (the inner generator is only closed when collected)


def create_app(service: ModelService, cfg: ServeConfig, api_key: str | None = None,
               engine: BatchingEngine | None = None) -> FastAPI:
    """The FastAPI app over `service`; the batching engine starts now and stops with the app."""
    engine = engine or BatchingEngine(service, cfg.max_batch_size, cfg.max_wait_ms, cfg.max_queue)
    routes = Routes(service, cfg, api_key, engine)
    app = FastAPI(title="onegen", version="1", lifespan=routes.lifespan, docs_url="/docs", redoc_url=None,
                  description="OneGen: one model that generates and retrieves in one pass. docs/SERVING.md")
    app.state.engine = engine
    app.state.service = service
    app.state.routes = routes
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=4 * cfg.max_text_chars + 16_384,
                       body_timeout_s=cfg.request_timeout_s)
    app.add_exception_handler(RequestValidationError, routes.invalid)
    app.add_exception_handler(InvalidRequest, refused)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crash)
    app.add_exception_handler(ModelNotServed, routes.unknown_model)
    app.post("/v1/ask", summary="answer a question, retrieving with the [RQ] hidden state as it generates")(routes.ask)
    app.post("/v1/link", summary="mark entity mentions in a text and link each to the entity table")(routes.link)
    app.get("/v1/health", summary="liveness: 200 while the engine runs (no API key needed)")(routes.health)
    app.get("/v1/info", summary="checkpoint, index tables, request defaults and limits")(routes.info)
    openai_api.register(app, routes)
    app.get("/", include_in_schema=False)(routes.index_page)
    app.get("/favicon.ico", include_in_schema=False)(favicon)
    return app


async def _client_gone(request: Request) -> None:
    """Returns when the client of a plain (non-streaming) request closes its connection. The body has
    been read, so the next ASGI message is `http.disconnect` (vLLM's `with_cancellation` waits the same
    way); a stream notices through Starlette's own disconnect listener."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # noqa: BLE001 - cannot tell: never claim the client left
        await asyncio.Event().wait()


def stream_error(error: BaseException, cfg: ServeConfig) -> dict:
    if isinstance(error, RequestTimeout):
        return error_body(504, _timeout_message(cfg))
    if isinstance(error, InvalidRequest):
        return error_body(400, error.message, error.param)
    if isinstance(error, (EngineStopped, RequestCancelled)):
        return error_body(503, str(error))
    return error_body(500, f"generation failed ({type(error).__name__}: {error})")


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                    header_timeout_s: float = HEADER_TIMEOUT_S) -> Iterator[str]:
    """Run `app` under uvicorn in a background thread (tests, notebooks, the load bench's reference);
    yields the base URL and shuts the server down (engine included) on exit. Port 0 = a free port,
    bound before uvicorn starts so there is no race for it."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(server_config(app, host, port, header_timeout_s, log_level="warning",
                                          timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="onegen-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
