"""Orchestration: the Prefect flows over the DVC stages, the `onegen` CLI, deployments and secrets.

The fast tests need no server. The slow ones copy the project (its git-visible files) into a temporary
directory beside a `shared -> ../shared` link, start `onegen serve` there (which starts a Prefect server on
127.0.0.1 at a free port, with its own PREFECT_HOME), run `prefect deployment run onegen/full-repro` and
`onegen/lambda-sweep` on a tiny model, and check the flow runs, the MLflow runs, and that a planted secret
reached no log, params file or MLflow store.
"""
from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

# a pipeline that runs in minutes on 2 cores: 1-layer 32-d model, 2 steps on 1 Ray worker, small evaluation
TINY = {
    "profile": "tiny",
    "backbone.tiny.hidden_size": 32, "backbone.tiny.intermediate_size": 64, "backbone.tiny.num_layers": 1,
    "tokenizer.vocab_size": 600, "tokenizer.corpus": [],
    "train.max_steps": 2, "train.max_length": 512, "train.max_doc_length": 128,
    "train_data.eval_every": 1000, "train_data.val_max_examples": 4,
    "distributed.num_workers": 1, "mlflow.log_checkpoint": False,
    "encode.max_doc_length": 64,
    "evaluate.max_questions": 2, "evaluate.max_articles": 1, "evaluate.el_benchmarks": ["msnbc"],
    "evaluate.settings": ["distractor"], "evaluate.baselines": [], "evaluate.max_new_tokens": 16,
    "evaluate.el_max_chars": 400, "evaluate.el_max_retrievals": 4,
}


def tiny_overrides(leave_out: tuple[tuple[str, str], ...] = ()) -> dict:
    """The tiny profile's settings as plain overrides, then TINY's on top, with no profile set: the stages lay a
    profile over params.yaml, so an override of a key the profile also sets would not take effect (`onegen
    repro` refuses it). `leave_out`: (section, key) of the profile that the caller sets itself."""
    prof = yaml.safe_load((ROOT / "profiles" / "tiny.yaml").read_text())
    flat = {f"{sec}.{k}": v for sec, d in prof.items() if isinstance(d, dict) for k, v in d.items()
            if (sec, k) not in leave_out and not isinstance(v, dict)}
    flat.update({f"{sec}.{k}.{kk}": vv for sec, d in prof.items() if isinstance(d, dict)
                 for k, v in d.items() if isinstance(v, dict) for kk, vv in v.items()})
    return {**flat, **TINY, "profile": ""}


SECRETS = {"OPENAI_API_KEY": "sk-planted-0n3g3n-secret-value", "AWS_SECRET_ACCESS_KEY": "aws-planted-0n3g3n-secret"}


# ---------------------------------------------------------------- fast: CLI, defaults, helpers

@pytest.mark.parametrize("sub", ["repro", "sweep", "serve", "ui", "ask", "link", "index", "api"])
def test_cli_help_is_fast_and_imports_nothing_heavy(sub):
    code = ("import sys\nfrom flows.cli import main\ntry:\n    main([%r, '--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nprint('HEAVY', sorted(m for m in ('prefect', 'mlflow', 'torch', 'ray', "
            "'dvc', 'onegen_core.config') if m in sys.modules))" % sub)
    t0 = time.perf_counter()
    done = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    assert f"usage: onegen {sub}" in done.stdout and "HEAVY []" in done.stdout, done.stdout
    assert took < 5, f"onegen {sub} --help took {took:.1f} s"


def test_servers_bind_loopback_unless_told_otherwise():
    from flows.cli import _parser
    from flows.serve import mlflow_ui_command, prefect_server_command

    for sub in ("serve", "ui"):
        args = _parser().parse_args([sub])
        assert args.host == "127.0.0.1"
    cmd = prefect_server_command()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    cmd = mlflow_ui_command("sqlite:////tmp/x.db")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--workers") + 1] == "1"
    cmd = mlflow_ui_command("sqlite:////tmp/x.db", host="0.0.0.0", port=5001)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and "5001" in cmd
    compose = yaml.safe_load((ROOT / "infra" / "mlflow" / "docker-compose.yaml").read_text())
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            published = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(port))  # ${MINIO_BIND:-127.0.0.1} -> default
            assert published.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback by default"


def _project(tmp: Path, dvc_yaml: str | None = None) -> Path:
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp / name)
    shutil.copytree(ROOT / "profiles", tmp / "profiles")
    if dvc_yaml is not None:
        (tmp / "dvc.yaml").write_text(dvc_yaml)
    return tmp


def test_a_stage_missing_from_dvc_yaml_fails_clearly(tmp_path):
    from flows.dvc_stages import STAGES, stage_chain
    from flows.project import FlowError

    assert STAGES[-1] == "evaluate"
    root = _project(tmp_path, "stages:\n" + "".join(f"  {s}:\n    cmd: 'true'\n" for s in STAGES[:-1]))
    with pytest.raises(FlowError, match="evaluate not defined in .*dvc.yaml"):
        stage_chain(root)
    assert stage_chain(root, until="link_threshold") == list(STAGES[:-1])
    with pytest.raises(FlowError, match="not a pipeline stage"):
        stage_chain(root, until="bench")


def test_overrides_change_only_their_lines_and_are_validated_first(tmp_path):
    from flows.params_file import write_overrides
    from flows.project import FlowError

    root = _project(tmp_path)
    before = (root / "params.yaml").read_text()
    log = logging.getLogger("test.overrides")
    changes = write_overrides(root, {"train.max_steps": 2, "tokenizer.corpus": [], "profile": "", "loss.lambda_r": 2.0}, log)
    assert set(changes) == {"train.max_steps", "tokenizer.corpus", "loss.lambda_r"}  # profile unchanged
    after = (root / "params.yaml").read_text()
    diff = [d for d in difflib.unified_diff(before.splitlines(), after.splitlines(), n=0, lineterm="")
            if d[:1] in "+-" and d[:3] not in ("+++", "---")]
    assert sorted(d[1:].split("#")[0].strip() for d in diff if d[0] == "+") == ["corpus: []", "lambda_r: 2.0", "max_steps: 2"], diff
    assert len([d for d in diff if d[0] == "-"]) == 4, diff  # the three values and the corpus list's one item
    assert after.count("#") == before.count("#")  # comments kept
    assert [*(root / ".dvc" / "tmp" / "onegen").glob("params.yaml.*")][0].read_text() == before
    for bad in ({"train.max_stepz": 3}, {"train.max_steps": "many"}, {"profile": "no-such-profile"}):
        with pytest.raises(FlowError, match="untouched"):
            write_overrides(root, bad, log)
        assert (root / "params.yaml").read_text() == after
    assert write_overrides(root, {"train.max_steps": 2}, log) == {}  # already there: no rewrite


def test_override_floats_read_back_as_floats_everywhere(tmp_path):
    """DVC's `-S` writer emits 1e-05, a string to YAML 1.1 readers (PyYAML, so the stages' params loader);
    the flows write 1.0e-05."""
    from flows.params_file import write_overrides
    from flows.project import load_project_params

    root = _project(tmp_path)
    write_overrides(root, {"train.lr": 1e-5, "loss.lambda_r": 0.0, "loss.temperature": 2.5e20}, logging.getLogger("t"))
    text = (root / "params.yaml").read_text()
    assert "lr: 1.0e-05" in text and "lambda_r: 0.0" in text
    p = load_project_params(root)
    assert (p.train.lr, p.loss.lambda_r, p.loss.temperature) == (1e-5, 0.0, 2.5e20)


def test_cli_overrides_are_typed():
    from onegen_core.config import parse_overrides

    assert parse_overrides(["train.max_steps=2", "train.lr=1e-3", "tokenizer.corpus=[]", "profile=",
                                "loss.kind=info_nce"]) == {
        "train.max_steps": 2, "train.lr": 1e-3, "tokenizer.corpus": [], "profile": "", "loss.kind": "info_nce"}


def test_recorded_tracking_uris_are_relative_to_the_project_and_resolve_back(tmp_path, monkeypatch):
    """metrics/{train,evaluate}.json and a checkpoint's train_run.json record the store as params give it,
    so that a clone on another machine does not point at this machine's path."""
    from tasks.adapters.tracking import portable_uri, tracking_uri

    monkeypatch.chdir(tmp_path)
    inside = tracking_uri("sqlite:///mlruns.db")
    assert inside == f"sqlite:///{tmp_path.resolve() / 'mlruns.db'}"
    assert portable_uri(inside) == "sqlite:///mlruns.db" and tracking_uri(portable_uri(inside)) == inside
    assert portable_uri(tracking_uri("sqlite:///sub/m.db")) == "sqlite:///sub/m.db"
    outside = f"sqlite:///{tmp_path.parent.resolve() / 'elsewhere.db'}"
    assert portable_uri(outside) == outside  # outside the project: kept absolute
    assert portable_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_stage_output_is_streamed_with_secrets_redacted_and_progress_throttled(tmp_path, monkeypatch):
    from flows.project import FlowError
    from flows.redaction import refuse_secrets, secret_values
    from flows.subprocesses import stream_command

    root = _project(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", SECRETS["OPENAI_API_KEY"])
    secrets = secret_values(root)
    assert SECRETS["OPENAI_API_KEY"] in secrets
    script = ("import os, sys\nprint('key is ' + os.environ['OPENAI_API_KEY'], flush=True)\n"
              "for i in range(200):\n    sys.stderr.write(f'\\rprogress {i}/199'); sys.stderr.flush()\n"
              "sys.stderr.write('\\n'); print('\\x1b[36mdone\\x1b[0m')")
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("test.stream")
    log.addHandler(Collect())
    log.setLevel(logging.INFO)
    rc, last = stream_command([PY, "-c", script], tmp_path, dict(os.environ), log, secrets, progress_every=3600)
    assert rc == 0
    assert records[0] == "key is ***" and records[-1] == "done", records
    assert "progress 199/199" in records and sum(r.startswith("progress") for r in records) <= 2, records
    assert not any(SECRETS["OPENAI_API_KEY"] in r for r in records + last)
    with pytest.raises(FlowError, match="secret"):
        refuse_secrets({"annotate.base_url": "http://x/" + SECRETS["OPENAI_API_KEY"]}, secrets, "overrides")


def test_train_run_nests_under_the_parent_and_takes_the_flow_tags(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from onegen_core.config import load_params
    from tasks.adapters.train_mlflow import open_mlflow_run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text("{}\n")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    p = load_params(ROOT / "params.yaml", {"train_data.train_file": "t.jsonl", "train_data.val_file": "t.jsonl",
                                           "mlflow.experiment": "nest", "mlflow.artifact_location": "art"})
    client = MlflowClient(uri)
    exp = client.create_experiment("nest", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp).info.run_id
    monkeypatch.setenv("ONEGEN_MLFLOW_PARENT_RUN_ID", parent)
    monkeypatch.setenv("ONEGEN_MLFLOW_TAGS", json.dumps({"onegen.sweep": "s1", "onegen.lambda_r": 4.0}))
    run_id = open_mlflow_run(p, uri, "onegen-abc", tmp_path / "run")
    tags = client.get_run(run_id).data.tags
    assert tags["mlflow.parentRunId"] == parent and tags["onegen.sweep"] == "s1" and tags["onegen.lambda_r"] == "4.0"
    # a continued run takes the new caller's tags and moves under it
    other = client.create_run(exp).info.run_id
    monkeypatch.setenv("ONEGEN_MLFLOW_PARENT_RUN_ID", other)
    monkeypatch.setenv("ONEGEN_MLFLOW_TAGS", json.dumps({"onegen.sweep": "s2"}))
    assert open_mlflow_run(p, uri, "onegen-abc", tmp_path / "run") == run_id
    tags = client.get_run(run_id).data.tags
    assert tags["mlflow.parentRunId"] == other and tags["onegen.sweep"] == "s2"
    monkeypatch.setenv("ONEGEN_MLFLOW_TAGS", "[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        open_mlflow_run(p, uri, "onegen-def", tmp_path / "run2")


def test_one_task_per_stage_with_retries_only_where_remote_services_are_called():
    from flows.full_repro import STAGES, stage_task

    tasks = {s: stage_task(s) for s in STAGES}
    assert {s: t.name for s, t in tasks.items()} == {s: s for s in STAGES}
    assert tasks["annotate"].retries == 2 and tasks["annotate"].retry_delay_seconds
    assert all(t.retries == 0 for s, t in tasks.items() if s != "annotate")


def test_prefect_yaml_declares_both_deployments_on_the_process_pool():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    assert set(deps) == {"full-repro", "lambda-sweep"}
    for d in deps.values():
        path, func = d["entrypoint"].split(":")
        assert f"def {func}(" in (ROOT / path).read_text()
        assert d["work_pool"]["name"] == "onegen-process"
    k8s = yaml.safe_load((ROOT / "infra" / "prefect" / "prefect-k8s.yaml").read_text())
    assert {d["name"] for d in k8s["deployments"]} == {"full-repro", "lambda-sweep"}


# ---------------------------------------------------------------- slow: served deployments end to end

def _api(url: str, body: dict | None = None):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


SOURCE_DIRS = ("onegen_core/", "tasks/", "flows/", "bench/", "tests/", "infra/", "profiles/", ".dvc/", ".ci/")


def _copy_project(dst: Path) -> None:
    """This working tree's code and settings as a new repository: the tracked files, plus untracked ones
    that are source (new modules not committed yet) — never outputs a pipeline run left behind."""
    def ls(*args: str) -> list[str]:
        out = subprocess.run(["git", "ls-files", "-z", *args], cwd=ROOT, capture_output=True, check=True).stdout
        return [f for f in out.decode().split("\0") if f]

    untracked = [f for f in ls("-o", "--exclude-standard") if f.startswith(SOURCE_DIRS) or "/" not in f]
    for f in ls("-c") + untracked:
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    git = ["git", "-c", "user.name=onegen-test", "-c", "user.email=test@localhost"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-q", "-m", "copy for the flow tests"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory, shared_data):
    """`onegen serve` on a copy of the project; yields (api url, project dir, env, serve log path)."""
    base = tmp_path_factory.mktemp("flows")
    proj = base / "proj"
    proj.mkdir()
    _copy_project(proj)
    os.symlink(shared_data.parent, base / "shared")  # params.yaml and dvc.yaml read ../shared/data
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(base / "prefect_home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
                "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
                "PATH": os.pathsep.join([str(Path(PY).parent), env.get("PATH", "")]), "PYTHONPATH": str(proj),
                **SECRETS})
    log_path = base / "serve.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([PY, "-m", "flows.cli", "serve", "--project-dir", str(proj), "--port", str(port)],
                                cwd=proj, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if all(_api(f"{api}/deployments/name/onegen/{d}") for d in ("full-repro", "lambda-sweep")):
                    break
            except OSError:
                pass
            assert proc.poll() is None, f"onegen serve exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"deployments not served after 180 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(1)
        client_env = {**env, "PREFECT_API_URL": api}
        for k in SECRETS:
            client_env.pop(k)
        yield api, proj, client_env, log_path
    finally:
        # SIGTERM to `onegen serve` alone: it pauses its deployments, then stops the server it started
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in map(int, children):  # the Prefect server, if onegen serve could not stop it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _run_deployment(served, name: str, params: dict) -> tuple[str, dict, list[str]]:
    api, proj, env, log_path = served
    done = subprocess.run([str(Path(PY).parent / "prefect"), "deployment", "run", name, "--params", json.dumps(params),
                           "--watch", "--watch-timeout", "1500"], cwd=proj, env=env, capture_output=True, text=True)
    out = done.stdout + done.stderr
    run_id = next((line.split("UUID:")[1].strip() for line in out.splitlines() if "UUID:" in line), None)
    assert run_id, out
    logs: list[str] = []
    while True:
        page = _api(f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC",
                                           "limit": 200, "offset": len(logs)})
        logs += [entry["message"] for entry in page]
        if len(page) < 200:
            break
    assert done.returncode == 0, f"{name} failed:\n{out[-2000:]}\n" + "\n".join(logs[-60:])
    return run_id, _api(f"{api}/flow_runs/{run_id}"), logs


def _mlflow(proj: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{proj / 'mlruns.db'}")


def _runs(client, **tags):
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client.search_runs([e.experiment_id for e in client.search_experiments()], filter_string=flt)


@pytest.mark.slow
def test_full_repro_deployment_runs_every_stage_then_skips_them(served):
    api, proj, _, _ = served
    run_id, fr, logs = _run_deployment(served, "onegen/full-repro", {"overrides": tiny_overrides()})
    assert fr["state"]["type"] == "COMPLETED"
    client = _mlflow(proj)
    (parent,) = _runs(client, **{"prefect.flow_run_id": run_id, "onegen.kind": "full-repro"})
    assert parent.info.status == "FINISHED" and parent.data.tags["prefect.deployment"] == "full-repro"
    assert parent.data.tags["onegen.stage.train"] == "ran" and parent.data.tags["onegen.stage.evaluate"] == "ran"
    assert parent.data.metrics["train/steps"] == 2 and any(k.startswith("evaluate/") for k in parent.data.metrics)
    train = client.get_run(parent.data.tags["onegen.train_run_id"])
    assert train.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert train.data.tags["prefect.flow_run_id"] == run_id
    assert "loss" in train.data.metrics and any(k.startswith("eval/") for k in train.data.metrics), train.data.metrics
    assert any("Running stage 'train'" in m for m in logs) and any("MLflow:" in m for m in logs)
    assert yaml.safe_load((proj / "params.yaml").read_text())["train"]["max_steps"] == 2

    run2, fr2, logs2 = _run_deployment(served, "onegen/full-repro", {"overrides": tiny_overrides()})
    assert fr2["state"]["type"] == "COMPLETED"
    (parent2,) = _runs(client, **{"prefect.flow_run_id": run2, "onegen.kind": "full-repro"})
    from flows.dvc_stages import STAGES

    assert {s: parent2.data.tags[f"onegen.stage.{s}"] for s in STAGES} == {s: "skipped" for s in STAGES}
    for s in STAGES:
        assert any(f"stage {s}: unchanged" in m and "skipped" in m for m in logs2), s
    assert parent2.data.metrics["train/steps"] == 2


@pytest.mark.slow
def test_lambda_sweep_gives_one_run_per_value_and_a_comparison(served):
    api, proj, _, _ = served
    before = (proj / "params.yaml").read_bytes()
    # the tiny profile pins loss.lambda_r (a profile wins over params.yaml, and the sweep refuses such a
    # profile), so the points carry the profile's other settings as plain overrides
    overrides = tiny_overrides(leave_out=(("loss", "lambda_r"),))
    params = {"lambda_r": [4.0, 0.0, 1.0], "overrides": overrides, "until": "train", "sweep_id": "sweep-test"}
    run_id, fr, logs = _run_deployment(served, "onegen/lambda-sweep", params)
    assert fr["state"]["type"] == "COMPLETED"
    assert (proj / "params.yaml").read_bytes() == before
    client = _mlflow(proj)
    (parent,) = _runs(client, **{"onegen.sweep": "sweep-test", "onegen.kind": "lambda-sweep"})
    points = [r for r in _runs(client, **{"onegen.sweep": "sweep-test"}) if r.info.run_id != parent.info.run_id]
    assert sorted(float(r.data.tags["onegen.lambda_r"]) for r in points) == [0.0, 1.0, 4.0]
    assert all("loss" in r.data.metrics and "val/recall_at_1" in r.data.metrics for r in points)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/sweep.csv", "sweep/sweep.md", "sweep/sweep.png"} <= arts
    table = list(csv.DictReader(io.StringIO(
        Path(client.download_artifacts(parent.info.run_id, "sweep/sweep.csv")).read_text())))
    assert [float(r["lambda_r"]) for r in table] == [0.0, 1.0, 4.0]
    assert {r["mlflow_run_id"] for r in table} == {r.info.run_id for r in points}
    # the sweep's shared view in the MLflow UI selects exactly its points and orders them by λr
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags["mlflow.sharedViewState.sweep-test"])
    assert view["orderByKey"] == "params.`loss.lambda_r`" and view["orderByAsc"] is True
    shown = client.search_runs([parent.info.experiment_id], view["searchFilter"])
    assert {r.info.run_id for r in shown} == {r.info.run_id for r in points}
    assert any("viewStateShareKey=sweep-test" in line for line in logs)  # the flow's log gives the link
    assert float(table[0]["retrieval_loss_last"]) == 0.0 < float(table[1]["retrieval_loss_last"])
    # every point trained with its own λr (until train: no evaluate metrics in any row)
    assert float(table[2]["retrieval_loss_last"]) > 0 and not any(
        k.startswith("eval/") and table[0][k] for k in table[0])


@pytest.mark.slow
def test_planted_secrets_reach_no_log_params_file_or_mlflow(served):
    api, proj, _, log_path = served
    runs = _api(f"{api}/flow_runs/filter", {"limit": 50})
    assert runs, "the end-to-end tests above must run first"
    places = {"serve output": log_path.read_bytes(), "mlflow db": (proj / "mlruns.db").read_bytes(),
              "params.yaml": (proj / "params.yaml").read_bytes(), "dvc.lock": (proj / "dvc.lock").read_bytes()}
    for f in (proj / "mlartifacts").rglob("*"):
        if f.is_file():
            places[str(f)] = f.read_bytes()
    prefect_home = Path(served[2]["PREFECT_HOME"])
    for f in prefect_home.rglob("*"):
        if f.is_file():
            places[str(f)] = f.read_bytes()
    for r in runs:
        places[f"flow run {r['id']}"] = json.dumps(r).encode()
        logs = _api(f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [r["id"]]}}, "limit": 200})
        places[f"logs of {r['id']}"] = json.dumps(logs).encode()
    for name, value in SECRETS.items():
        leaked = [where for where, blob in places.items() if value.encode() in blob]
        assert not leaked, f"{name}'s value found in {leaked}"


@pytest.mark.slow
def test_prefect_yaml_deploys_to_a_process_work_pool(served):
    """Last: `prefect deploy` replaces the served deployments with work-pool ones."""
    api, proj, env, _ = served
    prefect = str(Path(PY).parent / "prefect")
    for cmd in ([prefect, "work-pool", "create", "onegen-process", "--type", "process"],
                [prefect, "--no-prompt", "deploy", "--all"]):
        done = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(cmd[1:])}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    for name in ("full-repro", "lambda-sweep"):
        dep = _api(f"{api}/deployments/name/onegen/{name}")
        assert dep["work_pool_name"] == "onegen-process" and dep["parameters"]["project_dir"] == ""
        assert Path(dep["path"] or proj).resolve() == proj.resolve() or any(
            str(proj) in json.dumps(step) for step in dep.get("pull_steps") or []), dep


def test_a_new_experiment_opens_in_the_training_view_with_the_compared_columns(tmp_path):
    """MLflow 3 opens an untagged experiment in its GenAI view; ours carries the experiment-kind tag and
    the shared view state with the λr sweep's columns from the moment it is created, and a second call
    (another stage) changes nothing."""
    from tasks.adapters import tracking

    client = tracking.client_for(f"sqlite:///{tmp_path / 'm.db'}")
    exp_id = tracking.ensure_experiment(client, "fresh", (tmp_path / "art").as_uri())
    tags = client.get_experiment(exp_id).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = json.loads(tags[f"mlflow.sharedViewState.{tracking.VIEW_KEY}"])
    assert "metrics.`eval/hotpotqa/distractor/onegen/recall_at_1_subquery`" in view["selectedColumns"]
    assert tracking.ensure_experiment(client, "fresh", None) == exp_id
    assert client.get_experiment(exp_id).tags == tags
