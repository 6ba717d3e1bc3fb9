"""Running the decomposition annotation: every pending record through a backend (threads in process, or
Ray tasks on a cluster), each outcome written to the cache by the caller's thread as it completes.

Outcomes always come back to the driver, the single cache writer, so a killed run loses at most the
requests in flight. With Ray, the API key is read from the environment variable named in params
*inside each task*: set it on the cluster's nodes (e.g. a Kubernetes secret); it is never shipped in a
task's arguments or runtime env.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from onegen_core.data.multihop import MultiHopRecord
from onegen_core.prepare.decomposition import AnnotationRejected, answer_regex, build_prompt, parse_decomposition
from tasks.adapters.annotation_cache import AnnotationCache, AnnotationResult, CacheKey, cache_key
from tasks.adapters.annotators import Backend, BackendError

logger = logging.getLogger(__name__)

@dataclass
class AnnotationReport:
    """What a run did. ``cached``: already final in the cache (no request); ``accepted`` and
    ``rejected`` (by reason): decided in this run; ``errors``: backend failures, not cached, retried by
    the next run; ``duplicates``: records repeating a key already seen in this run; ``requests``:
    prompts sent to the backend."""

    total: int = 0
    cached: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    duplicates: int = 0
    requests: int = 0
    error_examples: dict[str, str] = field(default_factory=dict)  # example id → message (first few)

    MAX_ERROR_EXAMPLES = 20

    @property
    def done(self) -> int:
        """Records settled so far (cached, accepted, rejected, failed or duplicate)."""
        return self.cached + self.accepted + sum(self.rejected.values()) + self.errors + self.duplicates

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "cached": self.cached,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": sum(self.rejected.values()),
            "errors": self.errors,
            "duplicates": self.duplicates,
            "requests": self.requests,
            "error_examples": dict(self.error_examples),
        }


@dataclass(frozen=True)
class _Outcome:
    """What one worker did for one record: a final result, or a backend error."""

    key: CacheKey
    requests: int
    result: AnnotationResult | None = None
    error: str | None = None


@dataclass(frozen=True)
class Pending:
    """A record still to annotate, its cache key and the prompt it is asked with."""

    record: MultiHopRecord
    key: CacheKey
    prompt: str
    regex: str | None = None  # the answer format the server must keep to (`annotate.structured_output`)


def annotate_one(item: Pending, backend: Backend, max_attempts: int) -> _Outcome:
    """Prompt → backend → parse, retrying a malformed answer up to ``max_attempts`` times."""
    record, key, prompt = item.record, item.key, item.prompt
    rejection: AnnotationRejected | None = None
    response = ""
    redact = getattr(backend, "redact", None) or (lambda text: text)  # what is stored never holds the key
    for attempt in range(1, max_attempts + 1):
        try:
            response = redact(backend.complete(prompt) if item.regex is None else
                              backend.complete(prompt, regex=item.regex))
        except (BackendError, OSError) as exc:  # OSError covers timeouts and connection errors
            return _Outcome(key, attempt, error=redact(f"{type(exc).__name__}: {exc}"))
        try:
            decomposition = parse_decomposition(response, record)
        except AnnotationRejected as exc:
            rejection = exc
            logger.debug("example %s: attempt %d/%d rejected (%s)", record.id, attempt, max_attempts, exc)
            continue
        return _Outcome(key, attempt, AnnotationResult(record.id, "accepted", attempt, decomposition,
                                                       response=response))
    assert rejection is not None
    return _Outcome(key, max_attempts, AnnotationResult(record.id, "rejected", max_attempts, reason=rejection.reason,
                                                        detail=rejection.detail, response=response))


def _record_outcome(outcome: _Outcome, cache: AnnotationCache, report: AnnotationReport) -> None:
    """Store a final result at once (durable before the next one is awaited) and count it."""
    report.requests += outcome.requests
    example_id = outcome.key[0]
    if outcome.result is None:
        report.errors += 1
        if len(report.error_examples) < report.MAX_ERROR_EXAMPLES:
            report.error_examples[example_id] = outcome.error or ""
        logger.warning("example %s: backend failed, not cached (next run retries): %s", example_id, outcome.error)
        return
    cache.put(outcome.key, outcome.result)
    if outcome.result.status == "accepted":
        report.accepted += 1
        return
    reason = outcome.result.reason or ""
    report.rejected[reason] = report.rejected.get(reason, 0) + 1
    logger.info("example %s: rejected after %d attempts: %s %s", example_id, outcome.result.attempts, reason,
                outcome.result.detail)


def _pending(records: Iterable[MultiHopRecord], backend: Backend, cache: AnnotationCache,
             report: AnnotationReport, prompt_style: str, structured: bool) -> list[Pending]:
    """Records still to annotate; cached ones and repeated keys are counted, not sent."""
    todo: list[Pending] = []
    seen: set[CacheKey] = set()
    for record in records:
        report.total += 1
        key = cache_key(record, backend, prompt_style, structured)
        if key in seen:
            report.duplicates += 1
        elif key in cache:
            report.cached += 1
        else:
            todo.append(Pending(record, key, build_prompt(record, prompt_style),
                                answer_regex(record, prompt_style) if structured else None))
        seen.add(key)
    return todo


# A runner executes `annotate_one(item, backend, max_attempts)` for every pending item with at
# most `concurrency` in flight and yields each outcome as it completes. Threads here; Ray tasks on a
# cluster (tasks/annotate_ray.py). Outcomes always come back to the caller, the single cache writer.
Runner = Callable[[list[Pending], Backend, int, int], Iterable["_Outcome"]]


def bounded(items: Iterable[Any], submit: Callable[[Any], Any],
            wait_some: Callable[[list], tuple[list, list]], concurrency: int) -> Iterator[Any]:
    """Keep at most `concurrency` submitted items in flight and yield finished handles as they come:
    never more queued than a killed run can lose. `wait_some(in_flight) -> (done, still_in_flight)`."""
    queue = iter(items)
    in_flight: list = []
    while True:
        for item in queue:
            in_flight.append(submit(item))
            if len(in_flight) >= concurrency:
                break
        if not in_flight:
            break
        done, in_flight = wait_some(in_flight)
        yield from done


def thread_runner(todo: list[Pending], backend: Backend, max_attempts: int,
                  concurrency: int) -> Iterator[_Outcome]:
    """In-process: a bounded thread pool (requests are I/O-bound)."""
    def wait_some(in_flight: list) -> tuple[list, list]:
        done, pending = wait(in_flight, return_when=FIRST_COMPLETED)
        return list(done), list(pending)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="annotate") as pool:
        submit = lambda item: pool.submit(annotate_one, item, backend, max_attempts)  # noqa: E731
        for future in bounded(todo, submit, wait_some, concurrency):
            yield future.result()


def annotate(
    records: Iterable[MultiHopRecord],
    backend: Backend,
    cache: AnnotationCache,
    max_attempts: int,
    on_progress: Callable[[AnnotationReport], None] | None = None,
    max_concurrency: int | None = None,
    runner: Runner | None = None,
    prompt_style: str = "fig13",
    structured: bool = False,
) -> AnnotationReport:
    """Decompose every record not already final in ``cache``; return the counts.

    At most ``max_concurrency`` prompts are in flight (default: the backend's ``max_concurrency``
    attribute, else 1). Each result is written to the cache as soon as it completes, from this thread,
    so killing the process loses at most the in-flight requests. ``on_progress`` is called with the
    report after every settled record. ``runner`` decides where requests run (default: threads);
    ``prompt_style`` picks the prompt (:func:`build_prompt`: the paper's Fig. 13 by default); ``structured``
    asks the server to constrain each answer to the format (:func:`answer_regex`).
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    concurrency = max_concurrency if max_concurrency is not None else int(getattr(backend, "max_concurrency", 1))
    if concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {concurrency}")
    report = AnnotationReport()
    todo = _pending(records, backend, cache, report, prompt_style, structured)
    logger.info("annotation with %s/%s: %d records, %d cached, %d duplicates, %d to send (concurrency %d)",
                backend.name, backend.model, report.total, report.cached, report.duplicates, len(todo), concurrency)
    if on_progress is not None:
        on_progress(report)
    for outcome in (runner or thread_runner)(todo, backend, max_attempts, concurrency):
        _record_outcome(outcome, cache, report)
        if on_progress is not None:
            on_progress(report)
    logger.info("annotation done: %s", json.dumps(report.to_dict()))
    return report


def ray_runner(address: str = "") -> Runner:
    """A `Runner` that runs each request as a Ray task (zero CPUs reserved: they wait on the LLM
    endpoint, they do not compute), at most `concurrency` in flight. `address`: "" starts or joins a
    local Ray; "auto" or "ray://host:10001" joins a cluster."""
    import ray

    def run(todo: list[Pending], backend: Backend, max_attempts: int,
            concurrency: int) -> Iterator:
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        task = ray.remote(num_cpus=0, max_retries=0)(annotate_one)  # retries live in the backend
        backend_ref = ray.put(backend)
        submit = lambda item: task.remote(item, backend_ref, max_attempts)  # noqa: E731
        for ref in bounded(todo, submit, lambda refs: ray.wait(refs, num_returns=1), concurrency):
            yield ray.get(ref)

    return run
