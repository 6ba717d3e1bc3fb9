"""Annotation fanned out over a Ray cluster: each request runs as a Ray task (zero CPUs reserved —
they wait on the LLM endpoint, they do not compute), at most `concurrency` in flight; outcomes stream
back to the driver, which alone writes the append-only cache, so a killed run still loses at most the
requests in flight and a re-run resumes from the cache.

The API key is read from the environment variable named in params *inside each task*: set it on the
cluster's nodes (e.g. a Kubernetes secret); it is never shipped in a task's arguments or runtime env.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

from onegen_core.annotation import Backend, CacheKey, annotate_one, bounded
from onegen_core.data import MultiHopRecord


def ray_runner(address: str = ""):
    """A `Runner` for `onegen_core.annotation.annotate` that uses Ray tasks. `address`: "" starts or
    joins a local Ray; "auto" or "ray://host:10001" joins a cluster."""
    import ray

    def run(todo: list[tuple[MultiHopRecord, CacheKey]], backend: Backend, max_attempts: int,
            concurrency: int) -> Iterator:
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        task = ray.remote(num_cpus=0, max_retries=0)(annotate_one)  # retries live in the backend
        backend_ref = ray.put(backend)
        submit = lambda item: task.remote(item[0], item[1], backend_ref, max_attempts)  # noqa: E731
        for ref in bounded(todo, submit, lambda refs: ray.wait(refs, num_returns=1), concurrency):
            yield ray.get(ref)

    return run
