"""The `train` stage on a real two-node Ray cluster (`infra/ray/local-cluster.sh`: a head on 127.0.0.2 and a
worker node on 127.0.0.3, separate `ray start` processes), one Ray Train worker per node (SPREAD), and the
loss of a node: after the first checkpoint the worker node's raylet is killed (`kill -9`), the node is marked
dead, it rejoins, and Ray Train V2's `FailureConfig` restarts the worker group from the latest checkpoint.

Asserted from the run's own records (`events.jsonl`, `history.jsonl` beside the checkpoints): both ranks
started on different nodes, a second worker group started, at the step after the last checkpoint, and every
step's losses and learning rate equal those of an uninterrupted run of the same seed on the same cluster.
The test stops exactly the processes it started (`local-cluster.sh down`: the two nodes' sessions, by id).
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.stages.conftest import params_for

pytestmark = pytest.mark.slow
SCRIPT = ROOT / "infra" / "ray" / "local-cluster.sh"
STEPS = 10  # a checkpoint every 2 steps; enough steps left after the first one for the kill to land mid-run


def free_base_port() -> int:
    """A base port whose block (base .. base+350: every port local-cluster.sh derives) is free on both
    loopback addresses right now."""
    for base in range(27000, 60000, 500):
        try:
            for host in ("127.0.0.2", "127.0.0.3"):
                for port in (base, base + 201, base + 202, base + 301, base + 302):
                    with socket.socket() as s:
                        s.bind((host, port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port block for the test cluster")


class Cluster:
    def __init__(self, root: Path) -> None:
        self.port = free_base_port()
        self.env = {**os.environ, "ONEGEN_RAY_PORT": str(self.port), "ONEGEN_RAY_DIR": str(root),
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        self.address = f"127.0.0.2:{self.port}"
        self.log: list[str] = []

    def __call__(self, command: str) -> str:
        out = subprocess.run(["bash", str(SCRIPT), command], env=self.env, capture_output=True, text=True,
                             timeout=180)
        self.log.append(out.stdout + out.stderr)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("ray-cluster"))
    try:
        c("up")  # a failed `up` stops what it started itself
        yield c
    finally:
        c("down")


def events(summary: dict) -> list[dict]:
    path = Path(summary["ray_checkpoint"]).parent / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def history(summary: dict) -> dict[int, dict]:
    from tasks.adapters.train_summary import read_history

    return {r["step"]: r for r in read_history(Path(summary["ray_checkpoint"]).parent / "history.jsonl")}


def two_node_params(data_dir: Path, work: Path, address: str):
    return params_for(data_dir, work, **{
        "distributed.ray_address": address, "distributed.placement_strategy": "SPREAD",
        "distributed.num_workers": 2, "distributed.cpus_per_worker": 1.0, "distributed.max_failures": 3,
        "distributed.checkpoint_every": 2, "train.epochs": 2, "train.max_steps": STEPS})


def registered_steps(storage: Path) -> list[int]:
    """Steps of the checkpoints Ray Train's controller has registered (its snapshot in the run's storage):
    a checkpoint whose files are written but not yet registered is not restored after a failure."""
    for snap in storage.glob("onegen-*/checkpoint_manager_snapshot.json"):
        try:
            return [r["metrics"]["step"] for r in json.loads(snap.read_text())["checkpoint_results"]]
        except (ValueError, KeyError):  # being written
            return []
    return []


def kill_worker_after_first_checkpoint(cluster: Cluster, storage: Path, done: threading.Event,
                                       seen: list[int]) -> None:
    """Watch the run's storage; once the controller has registered a checkpoint, kill the worker node
    (raylet, kill -9), wait until Ray has marked it dead, and start it again: the node rejoins."""
    import ray

    deadline = time.time() + 240
    while time.time() < deadline and not registered_steps(storage):
        time.sleep(0.2)
    cluster("kill-worker")
    seen += registered_steps(storage)
    t0 = time.time()
    while time.time() - t0 < 60:
        if any(n["NodeManagerAddress"] == "127.0.0.3" and not n["Alive"] for n in ray.nodes()):
            cluster.log.append(f"worker node marked dead {time.time() - t0:.1f} s after the kill")
            break
        time.sleep(0.5)
    cluster("up-worker")
    done.set()


def test_two_nodes_lose_one_and_resume_step_for_step(cluster, data_dir, tmp_path_factory):
    import ray

    from tasks.train import run

    # an uninterrupted run on the same two nodes, one worker on each
    a = run(two_node_params(data_dir, tmp_path_factory.mktemp("uninterrupted"), cluster.address))
    starts_a = [e for e in events(a) if e["event"] == "worker_start"]
    assert {e["node_ip"] for e in starts_a} == {"127.0.0.2", "127.0.0.3"}
    assert [e["start_step"] for e in starts_a] == [0, 0]

    work = tmp_path_factory.mktemp("node-lost")
    p = two_node_params(data_dir, work, cluster.address)
    done, seen = threading.Event(), []
    from tasks.adapters.ray_session import connect, worker_env

    # the test's own connection (the stage uses it as it is): the watcher thread reads ray.nodes() through it
    connect(cluster.address, worker_env(threads=1, use_gpu=False))
    try:
        killer = threading.Thread(target=kill_worker_after_first_checkpoint,
                                  args=(cluster, Path(p.distributed.storage_path), done, seen), daemon=True)
        killer.start()
        b = run(p)
        killer.join(timeout=120)
    finally:
        ray.shutdown()
    assert done.is_set(), cluster.log
    print("\n".join(cluster.log))

    starts = [e for e in events(b) if e["event"] == "worker_start"]
    first, retry = starts[:2], starts[2:]
    assert {e["node_ip"] for e in first} == {"127.0.0.2", "127.0.0.3"}
    assert len(retry) == 2, starts  # the worker group started again, both ranks
    assert {e["node_ip"] for e in retry} == {"127.0.0.2", "127.0.0.3"}  # the rejoined node runs a rank again
    (resumed_at,) = {e["start_step"] for e in retry}
    # the latest checkpoint registered when the node died (one more may have registered as it died)
    assert seen and resumed_at in (max(seen), max(seen) + 2), (seen, resumed_at)
    print(f"checkpoints registered at the kill: steps {seen}; the retry resumed at step {resumed_at}")
    ha, hb = history(a), history(b)
    assert sorted(hb) == sorted(ha) == list(range(0, STEPS + 1))
    for step in range(1, STEPS + 1):
        for key in ("loss", "lm_loss", "retrieval_loss", "lr"):
            assert math.isclose(ha[step][key], hb[step][key], rel_tol=1e-6, abs_tol=1e-9), (step, key)


def wait_for_idle_cluster(cluster: Cluster, timeout_s: float = 120) -> None:
    """Until both nodes have their CPU free again (what an earlier run on the cluster held is released
    asynchronously); a CPU still held after `timeout_s` fails the test with the cluster's resource view."""
    import ray

    from tasks.adapters.ray_session import connect, worker_env

    started = connect(cluster.address, worker_env(threads=1, use_gpu=False))
    try:
        deadline = time.time() + timeout_s
        while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
            time.sleep(1)
        print(f"cluster CPU free: {ray.available_resources().get('CPU', 0)} of {ray.cluster_resources().get('CPU')}")
        assert ray.available_resources().get("CPU", 0) >= 2, (ray.available_resources(), ray.cluster_resources())
    finally:
        if started:
            ray.shutdown()


def test_encode_and_evaluate_on_ray_across_the_two_nodes(cluster, tmp_path, monkeypatch, char_tokenizer, tiny_lm,
                                                          small_inputs, shared_data):
    """Ray Data replicas on both nodes (0.75 CPU each: one per 1-CPU node, and room for Lance's write tasks):
    the encoded table equals the local encode, and the evaluation gives the local predictions and metrics."""
    import dataclasses

    import numpy as np

    from onegen_core.config import RayDataConfig
    from tasks import encode
    from tests.stages.conftest import encode_setup, evaluate_locally_and_on_ray, table_rows

    wait_for_idle_cluster(cluster)
    rd = RayDataConfig(actors_min=2, actors_max=2, cpus_per_actor=0.75, task_cpus=0.25, commit_every=20)
    cfg = encode_setup(tmp_path / "enc", char_tokenizer, tiny_lm, shared_data, n_questions=2, max_doc_length=200)
    local = encode.run(cfg)
    ray_cfg = dataclasses.replace(cfg, uri=str(tmp_path / "enc" / "idx-ray"))
    on_ray = encode.run(ray_cfg, ray_data=rd, ray_address=cluster.address)
    assert on_ray["ray_nodes"] == ["127.0.0.2", "127.0.0.3"]
    assert on_ray["units_in_index"] == local["units_in_index"]
    a, b = table_rows(cfg.uri, cfg.table), table_rows(ray_cfg.uri, cfg.table)
    assert sorted(a) == sorted(b)
    assert max(float(np.abs(a[u][5] - b[u][5]).max()) for u in a) <= 1e-5

    runs = evaluate_locally_and_on_ray(tmp_path / "eval", monkeypatch, char_tokenizer, tiny_lm, small_inputs, {
        "distributed.ray_address": cluster.address, "ray_data.actors_min": 2, "ray_data.actors_max": 2,
        "ray_data.cpus_per_actor": 0.75})
    assert runs["ray"]["ray_nodes"] == ["127.0.0.2", "127.0.0.3"]
