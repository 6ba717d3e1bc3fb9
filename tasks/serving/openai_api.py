"""OpenAI-compatible routes of `onegen api`: `POST /v1/chat/completions`, `POST /v1/completions`,
`GET /v1/models`, so the `openai` client, LangChain and LlamaIndex drive a OneGen checkpoint as they
drive vLLM or TGI.

What a OneGen checkpoint can do decides what is accepted (docs/SERVING.md, "OpenAI-compatible API"):
- one question per request. A chat is exactly one `user` message (text, or text parts); a completion
  is one `prompt`, read as that question. The checkpoint was fine-tuned on the paper's task prompt, so
  the question goes into that prompt (as `/v1/ask` does), not into a chat template or a raw
  continuation; `system`, `assistant` and `tool` messages are refused, never dropped in silence;
- `max_tokens` (alias `max_completion_tokens`), `temperature` (omitted = 0, greedy: the evaluated
  decoding, unlike OpenAI's default of 1), `top_p`, `seed`, `stop` (up to 4 strings, checked on what
  the model writes, not returned), `stream` with `stream_options.include_usage`; OneGen's own `top_k`
  and `max_retrievals` as extensions;
- fields a client may send with their neutral value (`n: 1`, `logprobs: false`, `presence_penalty: 0`,
  `response_format: {"type": "text"}`...) are accepted; any other value is a 400 naming the field,
  and an unknown field is a 400 as on `/v1/ask`.

The answer is the assistant message's `content` (the text in `<FINAL-ANSWER>`; when the model closed
none, what it wrote with OneGen's tokens removed). Extensions carry the rest: `retrievals` (each
`[RQ]` with its hits, as `/v1/ask` reports them), `reasoning_content` (what the model wrote, pasted
passages excluded: vLLM's field for a reasoning trace) and `final_answer` on the message; in a stream,
`reasoning_content` deltas as tokens are sampled, a `retrieval` delta at each `[RQ]`, then the
`content` delta. Joined, a stream's deltas equal the plain response. Errors are OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`); one that happens mid-stream is a `data:` record
holding it, which the `openai` client raises.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from onegen_core.config import ServeConfig
from onegen_core.evaluation.multihop import strip_special
from tasks.serving.batching import Job
from tasks.serving.service import InvalidRequest

# OpenAI's finish reasons: EOS and a stop string are "stop"; a budget (tokens, or the [RQ] cap) is "length"
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "retrieval_cap": "length"}


class _OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="the served checkpoint's id (GET /v1/models), its path, or 'onegen'")
    max_tokens: int | None = Field(None, validation_alias=AliasChoices("max_tokens", "max_completion_tokens"),
                                   description="tokens the model may sample (passages pasted back excluded)")
    temperature: float | None = Field(None, description="0 or omitted = greedy (the evaluated decoding)")
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = Field(None, description="up to 4 strings that end the answer (not returned)")
    stream: bool = False
    stream_options: dict[str, Any] | None = Field(None, description="{'include_usage': true}: a last chunk with usage")
    # accepted only with their neutral value (a client library may send them)
    n: int | None = None
    logprobs: Any = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = Field(None, description="a caller's tag; not stored")
    # OneGen's own
    top_k: int | None = Field(None, description="hits reported per [RQ]")
    max_retrievals: int | None = Field(None, description="[RQ] cap per question")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionBody(_OpenAIBody):
    messages: list[ChatMessage]
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None


class CompletionBody(_OpenAIBody):
    prompt: str | list[str]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


# neutral value(s) of each field that is accepted but has no effect here
_NEUTRAL: dict[str, tuple] = {"n": (1,), "logprobs": (False, 0), "top_logprobs": (0,), "presence_penalty": (0,),
                              "frequency_penalty": (0,), "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",),
                              "parallel_tool_calls": (False, True), "echo": (False,), "suffix": ("",),
                              "best_of": (1,), "response_format": ({"type": "text"},)}
_WHY = {"n": "one completion per request is served", "logprobs": "log-probabilities are not returned",
        "top_logprobs": "log-probabilities are not returned", "presence_penalty": "penalties are not applied",
        "frequency_penalty": "penalties are not applied", "logit_bias": "logit biases are not applied",
        "tools": "tool calls are not served", "tool_choice": "tool calls are not served",
        "echo": "the prompt is not echoed", "suffix": "suffixes are not served", "best_of": "one completion is served",
        "response_format": "structured outputs are not served"}


def check_neutral(body: BaseModel) -> None:
    """400 naming the first field sent with a value this server cannot honour (never ignored)."""
    for name, values in _NEUTRAL.items():
        if name not in body.model_fields_set:
            continue
        value = getattr(body, name)
        if value is None or any(type(value) is type(v) and value == v for v in values) or (
                name in ("presence_penalty", "frequency_penalty") and value == 0):
            continue
        raise InvalidRequest(name, f"{name}: {value!r} is not supported ({_WHY[name]}); omit it or send "
                                   f"{' or '.join(json.dumps(v) for v in values)}")
    opts = body.stream_options
    if opts is not None:
        if not body.stream:
            raise InvalidRequest("stream_options", "stream_options: only with \"stream\": true")
        unknown = set(opts) - {"include_usage"}
        if unknown:
            raise InvalidRequest("stream_options", f"stream_options: unknown key(s) {sorted(unknown)} "
                                                   f"(known: include_usage)")
        if not isinstance(opts.get("include_usage", False), bool):
            raise InvalidRequest("stream_options", "stream_options.include_usage: must be true or false")


def chat_question(messages: list[ChatMessage]) -> tuple[str, str]:
    """(question, param naming where it came from) of a chat: exactly one `user` message whose content
    is text or text parts. Anything the checkpoint cannot read is refused, named by position."""
    if not messages:
        raise InvalidRequest("messages", "messages: at least one message (one user message with the question)")
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    for i, m in enumerate(messages):
        if m.role in ("system", "developer"):
            raise InvalidRequest(f"messages.{i}.role", f"messages.{i}.role: {m.role!r} messages are not supported: "
                                 f"a OneGen checkpoint answers a question in the task prompt it was fine-tuned on, "
                                 f"which has no place for instructions; send the question as one user message")
        if m.role in ("assistant", "tool", "function"):
            raise InvalidRequest(f"messages.{i}.role", f"messages.{i}.role: {m.role!r}: one question per request (a "
                                 f"OneGen checkpoint was fine-tuned on single questions, not conversations)")
        if m.role != "user":
            raise InvalidRequest(f"messages.{i}.role", f"messages.{i}.role: unknown role {m.role!r} (send 'user')")
    if len(users) != 1:
        raise InvalidRequest("messages", f"messages: {len(users)} user messages; one question per request")
    i = users[0]
    content = messages[i].content
    param = f"messages.{i}.content"
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{param}.{k}", f"{param}.{k}: only text parts are read "
                                                     f"({{'type': 'text', 'text': ...}}), got type {part.get('type')!r}")
            texts.append(part["text"])
        content = "\n".join(texts)
    if content is None:
        raise InvalidRequest(param, f"{param}: must be a non-empty string")
    return content, param


def completion_question(prompt: str | list[str]) -> str:
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequest("prompt", f"prompt: {len(prompt)} prompts; one per request")
        prompt = prompt[0]
    return prompt


def content_of(result: dict) -> str:
    """The assistant's answer: the final answer when the model closed one, else what it wrote."""
    return result["answer"] if result["answer"] is not None else strip_special(result["sampled_text"])


def usage_of(result: dict) -> dict:
    c = result["counts"]
    return {"prompt_tokens": c["prompt_tokens"], "completion_tokens": c["generated_tokens"],
            "total_tokens": c["prompt_tokens"] + c["generated_tokens"], "pasted_tokens": c["pasted_tokens"]}


def _finish(result: dict) -> dict:
    return {"finish_reason": FINISH.get(result["finish_reason"], "stop"), "stop_reason": result.get("stop"),
            "onegen_finish_reason": result["finish_reason"]}


class StopFilter:
    """The streamed text of a request with `stop` strings: text that may be the start of a stop string
    is held back until it is known not to be one, and nothing from a stop string on is sent, so the
    joined deltas equal the plain response's `reasoning_content` (which the service cut the same way)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.held, self.done = stops, "", False

    def push(self, text: str) -> str:
        if self.done or not self.stops:
            return "" if self.done else text
        self.held += text
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.done = True
            return self.held[:cut]
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.held.endswith(s[:k])), default=0)
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return out

    def flush(self) -> str:
        out, self.held = ("" if self.done else self.held), ""
        return out


class OpenAIRoutes:
    """The three routes over `Routes` (tasks/serving/app.py): the same service, engine, model check and
    error handling; only the request and response shapes differ."""

    def __init__(self, routes) -> None:
        self.routes = routes
        self.service = routes.service
        self.created = int(time.time())

    def options(self, body: _OpenAIBody):
        check_neutral(body)
        return self.service.ask_options(body.max_tokens, body.max_retrievals, body.top_k, body.temperature,
                                        body.top_p, body.seed, body.stop)

    async def chat(self, body: ChatCompletionBody, request: Request) -> Response:
        self.routes.check_model(body.model)
        opts = self.options(body)
        question, param = chat_question(body.messages)
        item = self.service.ask_input(question, opts, param=param)
        return await self._submit(request, "chat.completion", body, item, opts)

    async def completions(self, body: CompletionBody, request: Request) -> Response:
        self.routes.check_model(body.model)
        opts = self.options(body)
        item = self.service.ask_input(completion_question(body.prompt), opts, param="prompt")
        return await self._submit(request, "text_completion", body, item, opts)

    async def models(self) -> JSONResponse:
        s = self.service
        return JSONResponse({"object": "list", "data": [
            {"id": s.checkpoint_id, "object": "model", "created": self.created, "owned_by": "onegen",
             "root": s.checkpoint_id, "parent": None, "max_model_len": s.context_length()}]})

    async def _submit(self, request: Request, kind: str, body: _OpenAIBody, item, opts) -> Response:
        meta = {"id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}",
                "created": int(time.time()), "model": body.model or self.service.checkpoint_id}
        shape = (lambda r: chat_response(r, meta)) if kind == "chat.completion" else (lambda r: completion_response(r, meta))
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        def events(queue: asyncio.Queue, job: Job, _shape: Callable[[dict], dict], cfg: ServeConfig):
            return stream_chunks(queue, job, cfg, kind, meta, opts.stop, include_usage)

        return await self.routes.submit(request, "ask", item, 1, opts.batch_key(), body.stream,
                                        opts.temperature == 0, shape, events)


def chat_response(result: dict, meta: dict) -> dict:
    message = {"role": "assistant", "content": content_of(result), "reasoning_content": result["sampled_text"],
               "final_answer": result["answer"], "retrievals": result["retrievals"]}
    return {**meta, "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "logprobs": None, **_finish(result)}],
            "usage": usage_of(result)}


def completion_response(result: dict, meta: dict) -> dict:
    choice = {"index": 0, "text": content_of(result), "logprobs": None, **_finish(result),
              "reasoning_content": result["sampled_text"], "final_answer": result["answer"],
              "retrievals": result["retrievals"]}
    return {**meta, "object": "text_completion", "choices": [choice], "usage": usage_of(result)}


async def stream_chunks(queue: asyncio.Queue, job: Job, cfg: ServeConfig, kind: str, meta: dict,
                        stops: tuple[str, ...], include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's server-sent chunks of one streaming request: `data: <chunk>` records only (no `event:`
    lines), a `: ping` comment when the engine is silent, `data: [DONE]` last."""
    from tasks.serving.app import engine_events, stream_error

    chat = kind == "chat.completion"
    obj = "chat.completion.chunk" if chat else "text_completion"
    filt = StopFilter(stops)

    def chunk(delta: dict, finish: dict | None = None, **extra: Any) -> str:
        fin = finish or {"finish_reason": None}
        choice = ({"index": 0, "delta": delta, "logprobs": None, **fin} if chat
                  else {"index": 0, "text": delta.pop("content", ""), "logprobs": None, **delta, **fin})
        return "data: " + json.dumps({**meta, "object": obj, "choices": [choice], **extra}, ensure_ascii=False) + "\n\n"

    try:
        if chat:
            yield chunk({"role": "assistant", "content": ""})
        async for ev in engine_events(queue, job):
            if ev is None:
                yield ": ping\n\n"
            elif ev["type"] == "token":
                text = filt.push(ev["text"])
                if text:
                    yield chunk({"reasoning_content": text})
            elif ev["type"] == "retrieval":
                if not filt.done:
                    yield chunk({"retrieval": {k: v for k, v in ev.items() if k != "type"}})
            elif ev["type"] == "done":
                result = ev["result"]
                rest = filt.flush()
                if rest:
                    yield chunk({"reasoning_content": rest})
                yield chunk({"content": content_of(result), "final_answer": result["answer"]})
                yield chunk({}, _finish(result))
                if include_usage:
                    yield "data: " + json.dumps({**meta, "object": obj, "choices": [], "usage": usage_of(result)}) + "\n\n"
            elif ev["type"] == "error":
                yield "data: " + json.dumps(stream_error(ev["error"], cfg), ensure_ascii=False) + "\n\n"
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


def register(app: FastAPI, routes) -> OpenAIRoutes:
    """Add the OpenAI-compatible routes to `app` (`create_app` calls it)."""
    oa = OpenAIRoutes(routes)
    app.post("/v1/chat/completions", summary="OpenAI-compatible chat: one user message = one question")(oa.chat)
    app.post("/v1/completions", summary="OpenAI-compatible completion: the prompt is the question")(oa.completions)
    app.get("/v1/models", summary="OpenAI-compatible: the one served checkpoint")(oa.models)
    return oa
