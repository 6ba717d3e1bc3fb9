"""The layout the README describes holds, over every file of `onegen_core/`, `tasks/`, `flows/` and `bench/`:

- each core subpackage imports only from those below it, and the core imports nothing of the project's
  other layers;
- `tasks/` is split by role: the DVC stage modules (and their shared command-line kit) directly in
  `tasks/`, framework adapters in `tasks/adapters/`, reports in `tasks/report/`, the model service in
  `tasks/serving/`; stages → adapters → core, serving → adapters → core, and nothing imports a stage;
- no module reaches into another's private names;
- stage modules stay thin (under 200 lines) and no function outside the tests runs past 100 lines.
"""
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
STAGE_MODULES = {"prepare", "annotate", "label", "train", "encode", "evaluate", "link_threshold"}
STAGE_KIT = "stage_common"
# role of a module under tasks/ -> the roles of tasks/ it may import (onegen_core is always allowed)
TASK_LAYERS = {
    "stage": {"stage_kit", "adapters", "report"},
    "stage_kit": set(),
    "adapters": {"adapters"},
    "report": {"report"},
    "serving": {"serving", "adapters"},
}
MAX_STAGE_LINES = 200
MAX_FUNCTION_LINES = 100
PROJECT = ("onegen_core", "tasks", "flows", "bench")


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


def module_name(f: Path) -> str:
    return ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def project_files(*tops: str) -> list[Path]:
    return sorted(f for top in tops for f in (ROOT / top).rglob("*.py"))


def task_role(module: str) -> str | None:
    """The role of a `tasks.*` module, or None for the package itself."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] in STAGE_MODULES:
        return "stage"
    if parts[1] == STAGE_KIT:
        return "stage_kit"
    return parts[1] if parts[1] in TASK_LAYERS else "unknown"


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


def test_tasks_folder_is_split_by_role():
    """Directly in tasks/: the stage modules and their kit; everything else lives in a role's folder."""
    top = {f.stem for f in (ROOT / "tasks").glob("*.py")} - {"__init__"}
    assert top == STAGE_MODULES | {STAGE_KIT}
    folders = {d.name for d in (ROOT / "tasks").iterdir() if d.is_dir() and d.name != "__pycache__"}
    assert folders == {"adapters", "report", "serving"}


def test_tasks_import_only_down_the_layers():
    bad = {}
    for f in project_files("tasks"):
        me = module_name(f)
        role = task_role(me)
        if role is None:
            continue
        assert role != "unknown", f
        pkg = me if f.name == "__init__.py" else me.rsplit(".", 1)[0]
        # a stage module may name itself; any other stage is a role no layer allows
        used = {task_role(m) for m in onegen_imports(f, pkg)
                if m.startswith("tasks.") and not (role == "stage" and m.split(".")[1] == f.stem)} - {None}
        wrong = used - TASK_LAYERS[role]
        if wrong:
            bad[str(f.relative_to(ROOT))] = sorted(wrong)
    assert bad == {}


def test_nothing_imports_a_stage_module():
    """Stages share adapters and the core, never each other; flows run them through DVC, bench never."""
    bad = {}
    for f in project_files("tasks", "flows", "bench"):
        me = module_name(f)
        stages = {m.split(".")[1] for m in onegen_imports(f, me.rsplit(".", 1)[0])
                  if m.startswith("tasks.") and len(m.split(".")) > 1} & STAGE_MODULES
        stages.discard(me.split(".")[1] if me.startswith("tasks.") else "")
        if stages:
            bad[str(f.relative_to(ROOT))] = sorted(stages)
    assert bad == {}


def test_no_module_imports_another_modules_private_names():
    bad = {}
    for f in project_files(*PROJECT):
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in PROJECT:
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    bad.setdefault(str(f.relative_to(ROOT)), []).extend(f"{node.module}.{n}" for n in private)
    assert bad == {}


def test_tasks_never_import_the_orchestration_layer():
    bad = {str(f.relative_to(ROOT)): sorted(m for m in onegen_imports(f, "tasks") if m.split(".")[0] == "flows")
           for f in project_files("tasks")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_one_place_resolves_mlflow_settings():
    """Only tasks/adapters/tracking.py builds an MLflow client or resolves the tracking store."""
    offenders = []
    for f in project_files("tasks", "flows", "bench"):
        if f.relative_to(ROOT).as_posix() == "tasks/adapters/tracking.py":
            continue
        text = f.read_text()
        if "MlflowClient(" in text or "sqlite:///" in text:
            offenders.append(str(f.relative_to(ROOT)))
    assert offenders == []


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_stage_modules_are_thin(stage):
    lines = len((ROOT / "tasks" / f"{stage}.py").read_text().splitlines())
    assert lines < MAX_STAGE_LINES, f"tasks/{stage}.py has {lines} lines"


def test_no_function_runs_past_100_lines():
    long = {}
    for f in project_files(*PROJECT):
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{f.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
    assert long == {}
