"""Joining a Ray cluster (or starting a local Ray) from a stage's driver: one place for the address rules
that the train, encode and evaluate stages share.

- `distributed.ray_address` empty: a local Ray on this machine (the embedded default).
- `auto`, `ray://head:10001`, `HOST:PORT`: join that cluster. A loopback `HOST` (`127.0.0.2:26379`, the
  local two-node cluster of `infra/ray/local-cluster.sh`) also names the driver's own node address: Ray
  would otherwise register the driver under the machine's external address, which no node of a loopback
  cluster listens on.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def worker_env(threads: int, use_gpu: bool) -> dict[str, str]:
    """Environment of every Ray worker process: one intra-op thread count, an offline model hub, the
    project's torch-extension cache; DeepSpeed told there is no CUDA on a CPU run."""
    env = {"OMP_NUM_THREADS": str(threads),
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                  str(Path.home() / ".cache" / "onegen" / "torch_extensions")),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TOKENIZERS_PARALLELISM": "false"}
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed would otherwise probe for CUDA
    return env


def loopback_host(address: str) -> str | None:
    """The host of a `HOST:PORT` address when it is a loopback address (127.x.y.z), else None."""
    if not address or "://" in address or address == "auto":
        return None
    host = address.rsplit(":", 1)[0]
    return host if host.startswith("127.") else None


def connect(address: str, env: dict[str, str], local_cpus: int = 0) -> bool:
    """Join `address` or start a local Ray (with at least `local_cpus` CPUs); True if this process started
    Ray (and so must shut it down). A Ray already initialised in this process is used as it is."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray would otherwise write an auth token
    if ray.is_initialized():
        return False
    if address:
        node_ip = loopback_host(address)
        ray.init(address=address, runtime_env={"env_vars": env},
                 **({"_node_ip_address": node_ip} if node_ip else {}))
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, local_cpus), include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=True)
    return True


def actor_pool(rd: Any):
    """The Ray Data actor pool of model replicas (`ray_data.actors_min`..`actors_max`). One batch in flight per
    replica: a replica busy with a forward pass gets its next batch when it is free, so batches spread over all
    replicas (a queue of several per actor lets the first ready replica take the first batches of a short job)."""
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(min_size=rd.actors_min, max_size=rd.actors_max, max_tasks_in_flight_per_actor=1)


def data_context(rd: Any) -> Any:
    """The current Ray Data context, set for the stages' replica pools:
    - the pool waits until `ray_data.actors_min` replicas have loaded the model before any batch goes out
      (else the first replica ready takes a short job's every batch), and a pool that cannot start in
      `ray_data.actors_start_timeout_s` (too few CPUs/GPUs, a node unreachable) fails with Ray's "Timed out
      while starting actors … not enough resources" instead of waiting with no error;
    - the stage's log stays readable: the stage shows its own progress (a bar per table or piece, a line per
      job), and Ray Data's own reporting — progress bars, or without a terminal an operator table every
      10 s — would repeat it many times over. Warnings still show."""
    import logging

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.wait_for_min_actors_s = rd.actors_start_timeout_s
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ctx
