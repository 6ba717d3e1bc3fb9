"""The identity of a training run (`tasks.adapters.run_fingerprint`) and where the driver keeps it
(`tasks.adapters.ray_train.run_dirs`)."""
from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# modules the train stage reaches that do not change what is trained (dvc.yaml says why)
# where figures are logged does not change what is trained (dvc.yaml says so beside the list)
NOT_FINGERPRINTED = {"tasks/adapters/tracking.py", "tasks/adapters/train_mlflow.py"}


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    from tasks.adapters.run_fingerprint import file_digest

    f = tmp_path / "a.txt"
    f.write_bytes(b"abc")
    assert file_digest(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_code_digest_covers_the_code_entries_of_the_train_deps_by_path_and_content(tmp_path):
    from tasks.adapters.run_fingerprint import code_digest, training_code

    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train:\n    deps:\n      - onegen_core/pkg\n      - tasks/stage.py\n      - data/train.jsonl\n"
        "      - {path: tasks/ignored.py}\n")
    (tmp_path / "onegen_core" / "pkg").mkdir(parents=True)
    (tmp_path / "onegen_core" / "pkg" / "b.py").write_text("B")
    (tmp_path / "onegen_core" / "pkg" / "notes.txt").write_text("not code")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "stage.py").write_text("S")
    assert training_code(tmp_path) == ["onegen_core/pkg", "tasks/stage.py"]
    want = hashlib.sha256(b"onegen_core/pkg/b.pyB" + b"tasks/stage.pyS").hexdigest()
    assert code_digest(tmp_path) == want
    (tmp_path / "tasks" / "stage.py").write_text("S2")
    assert code_digest(tmp_path) != want


def reached_task_modules(start: Path) -> set[str]:
    """The `tasks/` files `start` imports, directly or through other `tasks/` files (lazy imports too)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        f = todo.pop()
        rel = f.relative_to(ROOT).as_posix()
        if rel in seen:
            continue
        seen.add(rel)
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                if name.startswith("tasks."):
                    target = ROOT / (name.replace(".", "/") + ".py")
                    todo += [target] if target.is_file() else []
            if isinstance(node, ast.ImportFrom) and node.module == "tasks.adapters":  # from tasks.adapters import x
                todo += [ROOT / "tasks" / "adapters" / f"{a.name}.py" for a in node.names]
    return seen


def test_the_run_fingerprint_covers_every_adapter_the_train_stage_runs():
    """A finished run is reused only by the same code: every adapter a training run reaches is in the
    `train` deps of dvc.yaml, so a change to it gives a new fingerprint (and DVC re-runs the stage)."""
    from tasks.adapters.run_fingerprint import training_code

    covered = set()
    for entry in training_code():
        path = ROOT / entry
        covered |= {f.relative_to(ROOT).as_posix() for f in path.rglob("*.py")} if path.is_dir() else {entry}
    reached = {m for m in reached_task_modules(ROOT / "tasks" / "train.py") if m.startswith("tasks/adapters/")}
    assert {"tasks/adapters/ray_worker.py", "tasks/adapters/train_checkpoint.py"} <= reached
    missing = sorted(reached - NOT_FINGERPRINTED - covered)
    assert missing == [], f"add to the train stage's deps in dvc.yaml: {missing}"


def test_ray_run_name_keeps_a_run_found_by_its_fingerprint():
    from tasks.adapters.run_fingerprint import ray_run_name

    assert ray_run_name("0123456789ab", "auto", "") == "onegen-0123456789ab"
    chosen = "runs/ray/onegen-x/checkpoint_000002"
    assert ray_run_name("0123456789ab", chosen, "/abs/" + chosen) == "onegen-0123456789ab-from-checkpoint_000002"
    assert re.fullmatch(r"onegen-0123456789ab-\d{8}-\d{6}", ray_run_name("0123456789ab", "never", ""))


def test_run_fingerprint_ignores_how_a_run_is_executed_and_follows_what_it_trains(tmp_path):
    from onegen_core.config import load_params
    from tasks.adapters.run_fingerprint import run_fingerprint

    f = tmp_path / "t.jsonl"
    f.write_text("{}\n")
    base = {"train_data.train_file": str(f), "train_data.val_file": str(f), "tokenizer.corpus": []}
    a = run_fingerprint(load_params(ROOT / "params.yaml", base))
    assert len(a) == 12
    assert run_fingerprint(load_params(ROOT / "params.yaml", {**base, "distributed.checkpoint_every": 7,
                                                              "train.output_dir": "elsewhere"})) == a
    assert run_fingerprint(load_params(ROOT / "params.yaml", {**base, "train.lr": 1e-5})) != a
    f.write_text("{}\n{}\n")
    assert run_fingerprint(load_params(ROOT / "params.yaml", base)) != a


def test_run_dirs_keep_the_bookkeeping_beside_local_checkpoints_and_under_runs_for_remote_ones(tmp_path, monkeypatch):
    from tasks.adapters.ray_train import run_dirs

    monkeypatch.chdir(tmp_path)
    here = tmp_path.resolve()
    assert run_dirs("store", "onegen-x") == (here / "store", here / "store" / "onegen-x")
    assert run_dirs("s3://bucket/ray", "onegen-x") == ("s3://bucket/ray", here / "runs" / "onegen-x")
