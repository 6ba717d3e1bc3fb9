"""The layout the README describes holds: each core subpackage imports only from those below it, and no
stage module of `tasks/` imports another stage (stages share adapters, never each other)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# subpackage -> the onegen_core subpackages it may import (itself and config always allowed)
ALLOWED = {
    "data": set(),
    "method": set(),
    "prepare": {"method", "data"},
    "training": {"method", "data"},
    "inference": {"method"},
    "evaluation": {"method", "data", "prepare", "inference", "training"},
}
STAGE_MODULES = {"prepare", "annotate", "label", "train", "encode", "evaluate"}


def onegen_imports(path: Path, package: str) -> set[str]:
    """Dotted names of the modules `path` imports (absolute, or relative inside `package`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("sub", sorted(ALLOWED))
def test_core_subpackage_imports_only_from_below(sub):
    files = sorted((ROOT / "onegen_core" / sub).rglob("*.py"))
    assert files, sub
    bad = {}
    for f in files:
        used = {m.split(".")[1] for m in onegen_imports(f, f"onegen_core.{sub}")
                if m.startswith("onegen_core.") and len(m.split(".")) > 1}
        wrong = used - ALLOWED[sub] - {sub, "config"}
        if wrong:
            bad[str(f.relative_to(ROOT))] = sorted(wrong)
    assert bad == {}


def test_core_imports_nothing_outside_the_core():
    bad = {str(f.relative_to(ROOT)): sorted(m for m in onegen_imports(f, "onegen_core")
                                            if m.split(".")[0] in {"tasks", "flows", "bench"})
           for f in (ROOT / "onegen_core").rglob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_stage_module_imports_another_stage():
    assert {p.stem for p in (ROOT / "tasks").glob("*.py")} >= STAGE_MODULES
    bad = {}
    for f in sorted((ROOT / "tasks").glob("*.py")):
        stages = {m.split(".")[1] for m in onegen_imports(f, "tasks")
                  if m.startswith("tasks.") and len(m.split(".")) > 1} & STAGE_MODULES
        if stages - {f.stem}:
            bad[f.name] = sorted(stages - {f.stem})
    assert bad == {}


def test_tasks_never_import_the_orchestration_layer():
    bad = {f.name: sorted(m for m in onegen_imports(f, "tasks") if m.split(".")[0] == "flows")
           for f in (ROOT / "tasks").glob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_one_place_resolves_mlflow_settings():
    """Only tasks/tracking.py builds an MLflow client or resolves the tracking store."""
    offenders = []
    for f in sorted([*(ROOT / "tasks").glob("*.py"), *(ROOT / "flows").glob("*.py")]):
        if f.name == "tracking.py":
            continue
        text = f.read_text()
        if "MlflowClient(" in text or "sqlite:///" in text:
            offenders.append(f.name)
    assert offenders == []
