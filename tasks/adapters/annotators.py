"""Concrete backends for the decomposition annotation (``onegen_core.prepare.decomposition``).

- :class:`OpenAIChatBackend`: any OpenAI-compatible ``/chat/completions`` server (vLLM serving
  Qwen2-72B-Instruct, as in the paper, or a hosted API). Standard library HTTP only.
- :class:`LocalHFBackend`: a local transformers checkpoint, greedy, for small runs without a server.
- ``make_backend("heuristic")`` returns None: the heuristic needs no prompt, the caller uses
  :func:`onegen_core.prepare.decomposition.heuristic_decomposition` instead.

Why the care with the API key: it is read from the environment at each request and kept nowhere
else (not on the object, not in reprs, logs, error messages or the cache), and its value is redacted
(`***`) from everything a server sends back — error bodies and successful completions alike, since an
endpoint that echoes the request would otherwise put the key into the cache, the decompositions and
the training files. Keys shorter than `MIN_REDACTED_KEY` characters (vLLM's `EMPTY` placeholder) are
not secrets and are left alone, so that ordinary words in an answer survive.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
from collections import Counter
import urllib.request
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["Backend", "BackendError", "LocalHFBackend", "OpenAIChatBackend", "make_backend"]

logger = logging.getLogger(__name__)
MIN_REDACTED_KEY = 8
REDACTED = "***"


@runtime_checkable
class Backend(Protocol):
    """Something that completes a prompt. ``name`` and ``model`` enter the cache key (see
    :func:`cache_key`), so answers from different models are never mixed. It may set
    ``max_concurrency`` (default 1): how many prompts :func:`tasks.adapters.annotation_runner.annotate` may have in flight at once.
    ``regex``, when given, constrains the answer to match it (`annotate.structured_output`); a backend that
    cannot constrain raises `BackendError` rather than answer unconstrained."""

    name: str
    model: str

    def complete(self, prompt: str, regex: str | None = None) -> str: ...


class BackendError(RuntimeError):
    """A backend gave up on a prompt (timeouts, HTTP errors, after its own retries). :func:`tasks.adapters.annotation_runner.annotate`
    records it per example and does not cache it, so the next run tries again. Messages must never
    contain credentials."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class _Retryable(Exception):
    """A failure worth another try (timeout, connection error, 429, 5xx, unreadable 200 body)."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would replay the Authorization header to whatever host is named."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 (urllib hook)
        return None


def _retry_after(headers: Any) -> float | None:
    """Seconds from a numeric ``Retry-After`` header (HTTP-date forms are ignored)."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIChatBackend:
    """POST ``{base_url}/chat/completions`` with one user message; returns the reply's content.

    Retries timeouts, connection errors, 429, 5xx and unreadable 200 bodies with exponential backoff
    (``backoff_s * 2**k``, or the server's ``Retry-After`` if longer, capped at ``max_backoff_s``);
    any other 4xx (bad request, 401/403) fails at once. Gives up with :class:`BackendError`.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        max_concurrency: int = 8,
        max_backoff_s: float = 60.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0 or max_tokens < 1 or max_concurrency < 1:
            raise ValueError("need timeout_s > 0, max_retries >= 0, backoff_s >= 0, max_tokens >= 1, "
                             "max_concurrency >= 1")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.max_concurrency = int(max_concurrency)
        self._opener = urllib.request.build_opener(_NoRedirect())
        # what the server did, for the stage's report: HTTP retries, completions cut at max_tokens
        # (finish_reason "length"), completion tokens (`usage`); per process (a Ray task counts its own)
        self.stats: Counter = Counter()
        self._stats_lock = threading.Lock()
        if not os.environ.get(api_key_env):
            logger.info("environment variable %s is not set: requests carry no Authorization header", api_key_env)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, timeout_s={self.timeout_s}, max_retries={self.max_retries})")

    __str__ = __repr__

    def __getstate__(self) -> dict:  # a lock does not pickle (Ray ships the backend to its tasks)
        state = dict(self.__dict__)
        del state["_stats_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._stats_lock = threading.Lock()

    def _count(self, **counts: int) -> None:
        with self._stats_lock:
            self.stats.update(counts)

    # -- one request

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def redact(self, text: str) -> str:
        """`text` without the API key's value: whatever a server sends back may echo it (an error body, or
        a completion that repeats the request); nothing that reaches a message, a log or a file keeps it."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, REDACTED) if key and len(key) >= MIN_REDACTED_KEY else text

    _redact = redact

    def _post(self, body: bytes) -> bytes:
        request = urllib.request.Request(self.url, data=body, method="POST", headers=self._headers())
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            detail = self._redact(exc.read(300).decode("utf-8", "replace").strip()) if exc.fp else ""
            if status == 429 or status >= 500:
                raise _Retryable(f"HTTP {status}", status, _retry_after(exc.headers)) from None
            raise BackendError(f"POST {self.url}: HTTP {status} {detail}".strip(), status) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"timed out after {self.timeout_s}s") from None
            raise _Retryable(f"connection failed: {exc.reason}") from None
        except (TimeoutError, socket.timeout):
            raise _Retryable(f"timed out after {self.timeout_s}s") from None
        except (ConnectionError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection failed: {type(exc).__name__}: {exc}") from None

    def _content(self, raw: bytes) -> str:
        """``choices[0].message.content`` of a chat-completions response (its finish reason and token
        usage counted)."""
        try:
            payload = json.loads(raw)
        except ValueError:
            raise _Retryable(f"response body is not JSON ({len(raw)} bytes)") from None
        try:
            choice = payload["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Retryable("response has no choices[0].message.content") from None
        if not isinstance(content, str):
            raise _Retryable(f"choices[0].message.content is {type(content).__name__}, not a string")
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        tokens = usage.get("completion_tokens")
        self._count(completions=1, truncated=int(choice.get("finish_reason") == "length"),
                    completion_tokens=tokens if isinstance(tokens, int) else 0)
        return content

    # -- the protocol

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = self.backoff_s * (2 ** attempt)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff_s)

    def complete(self, prompt: str, regex: str | None = None) -> str:
        """The model's reply to ``prompt`` (greedy when ``temperature`` is 0); with ``regex``, decoding is
        constrained to it by the server's structured outputs (vLLM's `structured_outputs.regex`; a server
        without them ignores the field, and the parser still checks the answer)."""
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if regex is not None:
            request["structured_outputs"] = {"regex": regex}
        body = json.dumps(request).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            try:
                return self.redact(self._content(self._post(body)))  # a completion may echo the key too
            except _Retryable as exc:
                if attempt == self.max_retries:
                    raise BackendError(self.redact(f"POST {self.url}: {exc} (gave up after {attempt + 1} attempts)"),
                                       exc.status) from None
                delay = self._delay(attempt, exc.retry_after)
                self._count(http_retries=1)
                logger.warning("POST %s: %s; retry %d/%d in %.2fs", self.url, self.redact(str(exc)), attempt + 1,
                               self.max_retries, delay)
                time.sleep(delay)
            except BackendError as exc:
                raise BackendError(self.redact(str(exc)), exc.status) from None
        raise AssertionError("unreachable")


class LocalHFBackend:
    """A local causal LM, greedy, through its chat template when the tokenizer has one.

    One prompt at a time (``max_concurrency = 1``): generation on one model is not worth sharing
    between threads. Generation failures (e.g. out of memory on a long prompt) become
    :class:`BackendError`, so one bad example does not stop the run.
    """

    name = "hf"
    max_concurrency = 1

    def __init__(self, model_path: str | os.PathLike, max_new_tokens: int = 1024, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = str(model_path)
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        self._lm = AutoModelForCausalLM.from_pretrained(self.model).to(device).eval()
        self._lock = threading.Lock()
        logger.info("loaded %s on %s (chat template: %s)", self.model, device, self._has_chat_template())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_path={self.model!r}, max_new_tokens={self.max_new_tokens})"

    def _has_chat_template(self) -> bool:
        return bool(getattr(self._tokenizer, "chat_template", None))

    def _encode(self, prompt: str) -> dict:
        if self._has_chat_template():
            text = self._tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                       add_generation_prompt=True)
            return self._tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return self._tokenizer(prompt, return_tensors="pt")

    def complete(self, prompt: str, regex: str | None = None) -> str:
        """The greedy continuation of ``prompt``, new tokens only, special tokens dropped."""
        if regex is not None:
            raise BackendError(f"{self.model}: the local HF backend cannot constrain decoding "
                               "(annotate.structured_output needs an OpenAI-compatible server such as vLLM)")
        encoded = {k: v.to(self.device) for k, v in self._encode(prompt).items()}
        pad = self._tokenizer.pad_token_id
        pad = pad if pad is not None else self._tokenizer.eos_token_id
        try:
            with self._lock, self._torch.no_grad():
                output = self._lm.generate(**encoded, max_new_tokens=self.max_new_tokens, do_sample=False,
                                           pad_token_id=pad)
        except RuntimeError as exc:
            raise BackendError(f"{self.model}: generation failed: {exc}") from None
        new_tokens = output[0, encoded["input_ids"].shape[1]:]  # (new,)
        return self._tokenizer.decode(new_tokens, skip_special_tokens=True)


BackendKind = Literal["openai", "hf", "heuristic"]


def make_backend(kind: BackendKind, **settings: Any) -> Backend | None:
    """The backend for ``kind``; None for ``heuristic`` (use ``heuristic_decomposition``)."""
    if kind == "heuristic":
        return None
    factories = {"openai": OpenAIChatBackend, "hf": LocalHFBackend}
    if kind not in factories:
        raise ValueError(f"annotation backend must be one of 'openai', 'hf', 'heuristic', got {kind!r}")
    try:
        return factories[kind](**settings)
    except TypeError as exc:
        raise ValueError(f"bad settings for the {kind!r} annotation backend: {exc}") from None
