from __future__ import annotations

from pathlib import Path

import pytest

from onegen_core.config import ConfigError, Params, flatten, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_load():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params)
    assert p.backbone.is_tiny() and p.loss.kind == "bpr"


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  lrr: 0.1\n", "unknown key 'train.lrr'"),
        ("trian:\n  lr: 0.1\n", "unknown key 'trian'"),
        ("train:\n  lr: fast\n", "train.lr: expected float"),
        ("train:\n  epochs: 2.5\n", "train.epochs: expected int"),
        ("train:\n  epochs: true\n", "train.epochs: expected int"),
        ("loss:\n  kind: hinge\n", r"loss.kind: expected one of \['bpr', 'info_nce'\]"),
        ("backbone:\n  tiny:\n    num_layerz: 2\n", "unknown key 'backbone.tiny.num_layerz'"),
        ("tokenizer:\n  corpus: a.json\n", "tokenizer.corpus: expected a list"),
        ("loss:\n  temperature: 0\n", "temperature must be > 0"),
    ],
)
def test_bad_keys_and_types_name_the_key(tmp_path, text, message):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_params(f)


def test_ints_are_accepted_for_floats_and_overrides_apply(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  lr: 1\n")
    p = load_params(f, {"loss.lambda_r": 0.5, "train.epochs": 3})
    assert p.train.lr == 1.0 and isinstance(p.train.lr, float)
    assert p.loss.lambda_r == 0.5 and p.train.epochs == 3
    assert flatten(p)["loss.lambda_r"] == 0.5


def test_derived_steps():
    p = Params()
    p.train.batch_size, p.train.grad_accum, p.train.epochs = 4, 2, 3
    assert p.train.steps_per_epoch(17) == 2  # 5 micro-batches → 2 full steps
    p.train.max_steps = 4
    assert p.train.total_steps(17) == 4
