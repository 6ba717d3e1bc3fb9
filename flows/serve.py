"""Serving the deployments on one machine (`onegen serve`) and the local servers the project starts.

Every server binds 127.0.0.1 unless a host is given explicitly.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
PREFECT_PORT = 4200
MLFLOW_PORT = 5000
DEPLOYMENTS = ("full-repro", "lambda-sweep")


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def prefect_server_command(host: str = DEFAULT_HOST, port: int = PREFECT_PORT) -> list[str]:
    return [_bin("prefect"), "server", "start", "--host", host, "--port", str(port), "--analytics-off"]


def mlflow_ui_command(backend_store_uri: str, host: str = DEFAULT_HOST, port: int = MLFLOW_PORT) -> list[str]:
    return [_bin("mlflow"), "ui", "--backend-store-uri", backend_store_uri, "--host", host, "--port", str(port),
            "--workers", "1"]


def server_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Settings that keep a local Prefect quiet and stable (analytics off; a patient ephemeral start)."""
    env = dict(os.environ if env is None else env)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_healthy(api_url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Poll `<api>/health` until the Prefect server answers (or the process we started died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode} before becoming healthy")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the Prefect server at {api_url} was not healthy after {timeout:.0f} s")


def deployments(project_dir: Path):
    """The two deployments, their runs defaulting to `project_dir`."""
    from flows.full_repro import full_repro
    from flows.lambda_sweep import lambda_sweep

    params = {"project_dir": str(project_dir)}
    return (full_repro.to_deployment(name="full-repro", parameters=params, tags=["onegen"],
                                     description="prepare -> annotate -> label -> train -> encode -> evaluate through DVC"),
            lambda_sweep.to_deployment(name="lambda-sweep", parameters=params, tags=["onegen"],
                                       description="λr ablation (App. G.3.1) as DVC experiments"))


def serve(project_dir: Path, host: str = DEFAULT_HOST, port: int = PREFECT_PORT, limit: int = 1) -> None:
    """Serve `onegen/full-repro` and `onegen/lambda-sweep` from this process. With PREFECT_API_URL unset, a
    Prefect server is started first on host:port (and stopped on exit)."""
    from flows.project import project_root

    root = project_root(project_dir)
    server = None
    env = server_env()
    if not os.environ.get("PREFECT_API_URL"):
        if not port_free(host, port):
            raise SystemExit(f"port {port} on {host} is taken; pass --port, or export PREFECT_API_URL to use "
                             f"the server already there")
        api = f"http://{host}:{port}/api"
        print(f"starting the Prefect server: {' '.join(prefect_server_command(host, port))}", flush=True)
        # its own session: a Ctrl-C (or a signal to our process group) reaches this process only, which
        # pauses its deployments on the server and then stops the server (finally below)
        server = subprocess.Popen(prefect_server_command(host, port), env=env, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            wait_healthy(api, server)
        except BaseException:
            _stop(server)
            raise
        os.environ["PREFECT_API_URL"] = api
    for k, v in env.items():
        os.environ.setdefault(k, v)
    api = os.environ["PREFECT_API_URL"]
    try:
        import prefect

        print(f"serving onegen/full-repro and onegen/lambda-sweep for {root} (API {api}); in another shell:\n"
              f"  export PREFECT_API_URL={api}\n"
              f"  prefect deployment run onegen/full-repro --watch\n"
              f"  prefect deployment run onegen/lambda-sweep -p 'lambda_r=[0, 1, 4]' --watch", flush=True)
        prefect.serve(*deployments(root), limit=limit)
    finally:
        if server is not None:
            _stop(server)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
