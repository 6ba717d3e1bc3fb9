"""Dynamic batching of concurrent requests into the batched one-pass engine.

Requests wait in one bounded queue. A single worker thread owns the model: it takes the oldest waiting
request, waits up to `max_wait_ms` (counted from that request's arrival) for others that can share its
batch (same kind and `batch_key`, at most `max_batch_size` rows in all), runs the batch through
`ModelService.run_ask` / `run_link`, and resolves each request's future. Requests that cannot share the
batch keep their place in the queue.

- Full queue: `submit` raises `QueueFull` at once (the API answers 429 with Retry-After); requests
  already admitted are never dropped for load.
- Deadlines and disconnects: a request past its deadline, or cancelled because its client went away,
  is dropped while it waits; inside a batch its row stops before its next token (`StreamHooks.should_stop`)
  and the others go on.
- Failure isolation: when a batch raises, each of its requests is run again alone, so only the request
  that fails gets the error. A streaming request that already sent events is replayed only under greedy
  decoding (batch-invariant, tested), with the events it already sent skipped; otherwise it gets the
  error. The worker survives every exception.

Static batching, not continuous: a batch answers when its longest row ends (streaming clients see
their tokens as they are produced; `max_new_tokens` bounds the wait).
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("onegen.serve")


class QueueFull(RuntimeError):
    """The queue holds `max_queue` requests; try again later (HTTP 429)."""


class EngineStopped(RuntimeError):
    """The engine is shutting down or its worker died (HTTP 503)."""


class RequestTimeout(TimeoutError):
    """The request passed its deadline (HTTP 504)."""


class RequestCancelled(RuntimeError):
    """The client went away before the request finished."""


@dataclass(eq=False)
class Job:
    """One request: `item` is the service's input (AskInput / LinkInput), `rows` how many engine rows it
    takes (1 per question, 1 per link window). `sink` receives streamed events from the worker thread."""

    kind: str  # "ask" | "link"
    item: Any
    rows: int
    key: tuple
    deadline: float  # time.monotonic() after which the request is stopped
    sink: Callable[[dict], None] | None = None
    replayable: bool = True  # its events are the same when it runs again alone (greedy decoding)
    enqueued: float = field(default_factory=time.monotonic)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    sent: int = 0  # events delivered to the sink
    skip: int = 0  # events to swallow on a replay (already delivered by the failed batch)
    started: float | None = None

    # the service's Channel protocol
    def emit(self, event: dict) -> None:
        if self.skip:
            self.skip -= 1
            return
        self.sent += 1
        if self.sink is not None:
            self.sink(event)

    def stop_reason(self) -> str | None:
        if self.cancelled.is_set():
            return "cancelled"
        if time.monotonic() > self.deadline:
            return "timeout"
        return None

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class EngineCounters:
    admitted: int = 0
    rejected: int = 0  # queue full
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    batches: int = 0
    rows: int = 0  # rows generated over all batches (rows / batches = mean batch size)


class BatchingEngine:
    """The worker thread and its queue over one `ModelService`."""

    def __init__(self, service, max_batch_size: int, max_wait_ms: float, max_queue: int) -> None:
        self.service = service
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.counters = EngineCounters()
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._running_rows = 0
        self._thread = threading.Thread(target=self._loop, name="onegen-engine", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- client side (any thread)

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._closing or not self._thread.is_alive():
                raise EngineStopped("the engine is not running")
            if len(self._queue) >= self.max_queue:
                self.counters.rejected += 1
                raise QueueFull(f"{len(self._queue)} requests are waiting (serve.max_queue = {self.max_queue})")
            self._queue.append(job)
            self.counters.admitted += 1
            self._cond.notify_all()
        return job

    def status(self) -> dict:
        with self._cond:
            c = self.counters
            return {"alive": self._thread.is_alive() and not self._closing, "queued": len(self._queue),
                    "running_rows": self._running_rows, "admitted": c.admitted, "completed": c.completed,
                    "failed": c.failed, "rejected": c.rejected, "timed_out": c.timed_out, "cancelled": c.cancelled,
                    "batches": c.batches, "mean_batch_rows": round(c.rows / c.batches, 2) if c.batches else 0.0}

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking requests, fail the waiting ones, let the running batch finish."""
        with self._cond:
            self._closing = True
            waiting = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in waiting:
            self._fail(job, EngineStopped("the server is shutting down"))
        self._thread.join(timeout)

    # ---------------------------------------------------------------- worker

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException:  # the worker must outlive any request
                log.exception("engine: unexpected error around a batch")
                for job in batch:
                    if not job.future.done():
                        self._fail(job, RuntimeError("internal error"))

    def _drop_stale(self) -> None:
        """Fail waiting requests that are past their deadline or cancelled (caller holds the lock)."""
        keep: deque[Job] = deque()
        stale = []
        for job in self._queue:
            (stale if job.stop_reason() else keep).append(job)
        self._queue = keep
        for job in stale:
            reason = job.stop_reason()
            self._fail(job, RequestCancelled("the client went away") if reason == "cancelled" else
                       RequestTimeout("the request timed out while queued"), reason)

    def _compatible(self, first: Job) -> list[Job]:
        picked, rows = [first], first.rows
        for job in self._queue:
            if job is first or job.kind != first.kind or job.key != first.key:
                continue
            if rows + job.rows > self.max_batch_size:
                continue
            picked.append(job)
            rows += job.rows
        return picked

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                if self._closing:
                    return None
                self._drop_stale()
                if not self._queue:
                    self._cond.wait()
                    continue
                first = self._queue[0]
                picked = self._compatible(first)
                rows = sum(j.rows for j in picked)
                now = time.monotonic()
                remaining = first.enqueued + self.max_wait - now
                if rows >= self.max_batch_size or remaining <= 0 or first.rows >= self.max_batch_size:
                    for job in picked:
                        self._queue.remove(job)
                    self._running_rows = rows
                    return picked
                # wake for the batch's departure, a new request, or the next deadline of a waiting one
                soonest = min(j.deadline for j in self._queue) - now
                self._cond.wait(timeout=max(0.0, min(remaining, soonest)) + 1e-3)

    def _run(self, batch: list[Job]) -> None:
        now = time.monotonic()
        for job in batch:
            job.started = now
        try:
            results = self._call(batch)
        except Exception as e:  # noqa: BLE001 - isolate the failing request
            log.warning("engine: a batch of %d request(s) failed (%s: %s); running each alone", len(batch),
                        type(e).__name__, e)
            self._isolate(batch, e)
        else:
            for job, res in zip(batch, results):
                self._finish(job, res)
        finally:
            with self._cond:
                self._running_rows = 0
                self.counters.batches += 1
                self.counters.rows += sum(j.rows for j in batch)

    def _call(self, batch: list[Job]) -> list[dict]:
        items = [(job.item, job) for job in batch]
        run = self.service.run_ask if batch[0].kind == "ask" else self.service.run_link
        return run(items)

    def _isolate(self, batch: list[Job], first_error: Exception) -> None:
        if len(batch) == 1:
            self._fail(batch[0], first_error)
            return
        for job in batch:
            if job.sent and not job.replayable:
                self._fail(job, first_error)
                continue
            job.skip = job.sent
            try:
                (res,) = self._call([job])
            except Exception as e:  # noqa: BLE001
                log.warning("engine: request failed alone (%s: %s)", type(e).__name__, e)
                self._fail(job, e)
            else:
                self._finish(job, res)

    def _finish(self, job: Job, result: dict) -> None:
        reason = result.get("finish_reason")
        if reason in ("timeout", "cancelled"):
            self._fail(job, RequestTimeout("the request timed out while generating") if reason == "timeout"
                       else RequestCancelled("the client went away"), reason)
            return
        result.setdefault("batch", {})["queue_ms"] = round(((job.started or job.enqueued) - job.enqueued) * 1000, 2)
        with self._cond:
            self.counters.completed += 1
        if job.sink is not None:
            job.sink({"type": "done", "result": result})
        _settle(job.future, result=result)

    def _fail(self, job: Job, error: BaseException, reason: str | None = None) -> None:
        with self._cond:
            if reason == "timeout":
                self.counters.timed_out += 1
            elif reason == "cancelled":
                self.counters.cancelled += 1
            else:
                self.counters.failed += 1
        if job.sink is not None:
            job.sink({"type": "error", "error": error})
        _settle(job.future, error=error)


def _settle(future: concurrent.futures.Future, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve a request's future unless it is already done: the API cancels the future of a client that
    left or timed out from the event loop's thread, which can happen between a check and a set."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass
