"""Joining a cluster: which addresses name the driver's own node, the workers' environment, the replica pool."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("address, host", [
    ("127.0.0.2:26379", "127.0.0.2"),  # infra/ray/local-cluster.sh: the driver registers as the head's address
    ("127.0.0.3:6379", "127.0.0.3"),
    ("10.0.0.5:6379", None),           # a real host: Ray finds the driver's address itself
    ("auto", None),
    ("ray://head:10001", None),
    ("", None),
])
def test_a_loopback_address_names_the_drivers_node(address, host):
    from tasks.adapters.ray_session import loopback_host

    assert loopback_host(address) == host


def test_worker_env_tells_deepspeed_there_is_no_cuda_only_on_a_cpu_run():
    from tasks.adapters.ray_session import worker_env

    cpu, gpu = worker_env(3, use_gpu=False), worker_env(3, use_gpu=True)
    assert cpu["OMP_NUM_THREADS"] == gpu["OMP_NUM_THREADS"] == "3"
    assert cpu["DS_ACCELERATOR"] == "cpu" and "DS_ACCELERATOR" not in gpu
    assert cpu["TOKENIZERS_PARALLELISM"] == "false"


def test_the_replica_pool_spans_the_configured_sizes_one_batch_in_flight_each():
    from onegen_core.config import RayDataConfig
    from tasks.adapters.ray_session import actor_pool, data_context

    rd = RayDataConfig(actors_min=2, actors_max=5, actors_start_timeout_s=30)
    pool = actor_pool(rd)
    assert (pool.min_size, pool.max_size, pool.max_tasks_in_flight_per_actor) == (2, 5, 1)
    ctx = data_context(rd)
    assert ctx.wait_for_min_actors_s == 30 and not ctx.enable_progress_bars


def test_ray_data_settings_are_range_checked():
    from onegen_core.config import ConfigError, RayDataConfig

    with pytest.raises(ConfigError, match="actors_max"):
        RayDataConfig(actors_min=3, actors_max=2)
    with pytest.raises(ConfigError, match="task_cpus"):
        RayDataConfig(task_cpus=0)
