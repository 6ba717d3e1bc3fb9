"""Overrides written into params.yaml, as `dvc exp run -S` writes them, but keeping the file's comments
and layout: only the overridden lines change.

Why not DVC's writer: it re-flows the whole file and emits floats such as 1e-05, which YAML 1.1 readers
(PyYAML, hence the stages' params loader) read back as strings. The round trip here (ruamel) changes the
overridden values only, writes floats every reader reads as floats, and checks the result says exactly
what was meant before it replaces the file.
"""
from __future__ import annotations

import io
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from flows.project import FlowError, load_project_params
from onegen_core.data.atomic_write import write_text_atomic


def merged_overrides(overrides: dict[str, Any] | None, **named: Any) -> dict[str, Any]:
    """`overrides` plus the flows' named options (profile -> `profile`, experiment -> `mlflow.experiment`, …);
    a named option that contradicts the same key in `overrides` is an error."""
    out = dict(overrides or {})
    for key, value in named.items():
        if value is None:
            continue
        if key in out and out[key] != value:
            raise FlowError(f"{key} given twice with different values: {out[key]!r} and {value!r}")
        out[key] = value
    return out


def round_trip_yaml():
    """A ruamel round-trip loader/dumper set to the layout of params.yaml."""
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)  # the layout of params.yaml
    y.width = 4096
    y.representer.add_representer(float, represent_float)
    return y


def represent_float(representer, value: float):
    """Floats every YAML reader reads back as floats: 1e-05 is a string to YAML 1.1 (PyYAML, hence the
    stages' params loader), 1.0e-05 is a float to both 1.1 and 1.2."""
    if math.isnan(value):
        text = ".nan"
    elif math.isinf(value):
        text = ".inf" if value > 0 else "-.inf"
    else:
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{exp}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def keep_trailing_comment(parent, key: str, old: Any, new: Any) -> Any:
    """A block list or mapping carries the comment / blank line that follows it on its last item: move it
    to the replacement so the file keeps its layout."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(old, CommentedSeq) and old.fa.flow_style() and isinstance(new, (list, tuple)):
        new = CommentedSeq(new)  # [a, b] stays [a, b]
        new.fa.set_flow_style()
        return new
    if not isinstance(old, (CommentedSeq, CommentedMap)) or not len(old):
        return new
    last = len(old) - 1 if isinstance(old, CommentedSeq) else list(old.keys())[-1]
    entry = old.ca.items.get(last)
    tok = entry and (entry[0] if isinstance(old, CommentedSeq) else entry[2])
    if tok is None:
        return new
    if isinstance(new, (list, tuple)) and new:
        new = CommentedSeq(new)
        new.ca.items[len(new) - 1] = [tok, None, None, None]
    elif isinstance(new, dict) and new:
        new = CommentedMap(new)
        new.ca.items[list(new.keys())[-1]] = [None, None, tok, None]
    else:
        parent.ca.items[key] = [None, None, tok, None]
    return new


def apply_overrides(doc, overrides: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Set each dotted key of `overrides` in the round-trip document `doc` (existing keys only); returns
    {key: (old, new)} for the keys whose value changed."""
    changes: dict[str, tuple[Any, Any]] = {}
    for key, value in overrides.items():
        node = doc
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not hasattr(node, "get") or part not in node:
                raise FlowError(f"override {key!r}: params.yaml has no key {'.'.join(parts[: i + 1])!r} "
                                f"(overrides change existing keys only), params.yaml untouched")
            if i < len(parts) - 1:
                node = node[part]
        old = node[parts[-1]]
        old_plain = json.loads(json.dumps(old, default=str))
        if old_plain != value:
            node[parts[-1]] = keep_trailing_comment(node, parts[-1], old, value)
            changes[key] = (old_plain, value)
    return changes


def _dump_checked(y, doc, text: str, overrides: dict[str, Any]) -> str:
    """`doc` as text, after checking it reads back as the original `text` with `overrides` set and nothing
    else changed: never leave a file that does not say what we meant."""
    from onegen_core.config import set_dotted

    buf = io.StringIO()
    y.dump(doc, buf)
    expected = yaml.safe_load(text) or {}
    for key, value in overrides.items():
        set_dotted(expected, key, value)
    if yaml.safe_load(buf.getvalue()) != expected:
        raise FlowError("writing the overrides would change params.yaml beyond the overridden keys; untouched")
    return buf.getvalue()


def _back_up(root: Path, path: Path) -> str:
    """A copy of `path` under .dvc/tmp/onegen/, named by the time; returns where."""
    backup_dir = root / ".dvc" / "tmp" / "onegen"
    backup_dir.mkdir(parents=True, exist_ok=True)
    saved = str(backup_dir / f"params.yaml.{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copy2(path, saved)
    return saved


def refuse_profile_shadowing(root: Path, doc: dict[str, Any], overrides: dict[str, Any]) -> None:
    """The stages read params.yaml, then lay the profile it names over it: an override written into
    params.yaml for a key that profile also sets would be silently undone. Such an override is a
    `FlowError` naming the key and the profile (unless it equals the profile's own value)."""
    profile = overrides.get("profile", doc.get("profile")) or ""
    if not profile:
        return
    overlay = yaml.safe_load((root / "profiles" / f"{profile}.yaml").read_text()) or {}
    for key, value in overrides.items():
        node: Any = overlay
        for part in key.split("."):
            node = node.get(part, _UNSET) if isinstance(node, dict) else _UNSET
        if node is not _UNSET and node != value:
            raise FlowError(f"-S {key}={value}: profile '{profile}' sets {key}: {node} and the stages lay the "
                            f"profile over params.yaml, so the override would not take effect; edit "
                            f"profiles/{profile}.yaml, or run without the profile. params.yaml untouched")


_UNSET = object()


def write_overrides(root: Path, overrides: dict[str, Any], log: logging.Logger | Any,
                    backup: bool = True) -> dict[str, tuple[Any, Any]]:
    """Write `overrides` (dotted key -> value) into params.yaml so DVC sees them, as `dvc exp run -S` does:
    only existing keys, and the values are checked against the typed params before anything is written.
    Unlike `dvc exp run -S` (whose writer re-flows the whole file and emits floats such as 1e-05 that YAML
    1.1 readers take for strings), the file is updated with a comment- and layout-preserving round trip
    that changes only the overridden lines; the previous file is kept under .dvc/tmp/onegen/ (`backup`)
    and every change is logged. Returns {key: (old, new)} for the keys whose value changed."""
    from onegen_core.config import ConfigError

    if not overrides:
        return {}
    path = root / "params.yaml"
    try:
        load_project_params(root, overrides)
    except ConfigError as e:
        raise FlowError(f"overrides rejected, params.yaml untouched: {e}") from None
    text = path.read_text()
    y = round_trip_yaml()
    doc = y.load(text)
    refuse_profile_shadowing(root, dict(doc), overrides)
    changes = apply_overrides(doc, overrides)
    if not changes:
        log.info("params.yaml already holds the %d override(s); not rewritten", len(overrides))
        return {}
    new_text = _dump_checked(y, doc, text, overrides)
    saved = _back_up(root, path) if backup else ""
    write_text_atomic(path, new_text)
    for key, (old, new) in changes.items():
        log.warning("params.yaml: %s: %s -> %s", key, json.dumps(old), json.dumps(new))
    if backup:
        log.warning("wrote %d override(s) into params.yaml (DVC reads stage params from it; the outputs will "
                    "match it). Previous file: %s; `git diff params.yaml` shows the change", len(changes), saved)
    return changes
