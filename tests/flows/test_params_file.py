"""flows/params_file.py: overrides merged with the flows' named options, applied to a round-trip
document, and floats written so that every YAML reader reads them back as floats."""
from __future__ import annotations

import io

import pytest
import yaml


def test_named_options_join_the_overrides_unless_they_contradict():
    from flows.params_file import merged_overrides
    from flows.project import FlowError

    assert merged_overrides({"a.b": 1}, profile="tiny", **{"mlflow.experiment": None}) == {"a.b": 1, "profile": "tiny"}
    assert merged_overrides(None, profile="tiny") == {"profile": "tiny"}
    assert merged_overrides({"profile": "tiny"}, profile="tiny") == {"profile": "tiny"}
    with pytest.raises(FlowError, match="profile given twice with different values: 'a' and 'b'"):
        merged_overrides({"profile": "a"}, profile="b")


@pytest.mark.parametrize("value,text", [(1e-05, "1.0e-05"), (2.5e20, "2.5e+20"), (0.5, "0.5"), (0.0, "0.0"),
                                        (float("inf"), ".inf"), (float("-inf"), "-.inf"), (float("nan"), ".nan")])
def test_floats_are_written_as_yaml_1_1_floats(value, text):
    from flows.params_file import round_trip_yaml

    buf = io.StringIO()
    round_trip_yaml().dump({"x": value}, buf)
    assert buf.getvalue() == f"x: {text}\n"
    back = yaml.safe_load(buf.getvalue())["x"]  # PyYAML: YAML 1.1
    assert isinstance(back, float) and (back == value or value != value)


def test_apply_overrides_changes_existing_keys_and_keeps_comments():
    from flows.params_file import apply_overrides, round_trip_yaml
    from flows.project import FlowError

    y = round_trip_yaml()
    doc = y.load("train:\n  steps: 3  # how many\n  corpus:\n    - a\n    - b\n\nloss:\n  kind: bpr\n")
    assert apply_overrides(doc, {"train.steps": 5, "train.corpus": ["c"], "loss.kind": "bpr"}) == {
        "train.steps": (3, 5), "train.corpus": (["a", "b"], ["c"])}
    buf = io.StringIO()
    y.dump(doc, buf)
    assert buf.getvalue() == "train:\n  steps: 5  # how many\n  corpus:\n    - c\n\nloss:\n  kind: bpr\n"
    with pytest.raises(FlowError, match="params.yaml has no key 'train.stepz'"):
        apply_overrides(doc, {"train.stepz": 1})
    with pytest.raises(FlowError, match="no key 'loss.kind.x'"):
        apply_overrides(doc, {"loss.kind.x": 1})


def test_an_override_the_profile_would_undo_is_refused(tmp_path):
    """`onegen repro --profile X -S key=v` with X setting `key`: the stages lay the profile over params.yaml,
    so the written override would be silently undone. Refused, params.yaml untouched; an override equal to the
    profile's value, or of a key the profile leaves alone, goes through."""
    import logging
    import shutil

    import pytest

    from flows.params_file import write_overrides
    from flows.project import FlowError
    from tests.conftest import ROOT

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    before = (tmp_path / "params.yaml").read_text()
    log = logging.getLogger("test")
    with pytest.raises(FlowError, match="profile 'tiny' sets distributed.num_workers: 2"):
        write_overrides(tmp_path, {"profile": "tiny", "distributed.num_workers": 3}, log, backup=False)
    assert (tmp_path / "params.yaml").read_text() == before
    changes = write_overrides(tmp_path, {"profile": "tiny", "distributed.num_workers": 2, "train.seed": 7}, log,
                              backup=False)
    assert set(changes) == {"profile", "distributed.num_workers", "train.seed"}
