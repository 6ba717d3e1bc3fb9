"""Issue 16, settings: a missing or empty params file, numbers out of range (NaN, inf, 0, negative), a key
given twice and broken YAML are `ConfigError`s naming the file and the key (or line); a stage given such
a file writes nothing."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from onegen_core import config as C
from onegen_core.config import ConfigError, load_params, parse_overrides

ROOT = Path(__file__).resolve().parents[2]


def test_missing_params_file_is_an_error_and_the_stage_writes_nothing(tmp_path, monkeypatch):
    from tasks import prepare

    out = tmp_path / "data" / "prepared"
    out.mkdir(parents=True)
    (out / "multihop_train.jsonl").write_text('{"kept": 1}\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"param\.yaml: params file not found"):
        prepare.main(["--params", "param.yaml"])  # the typo of the report
    assert (out / "multihop_train.jsonl").read_text() == '{"kept": 1}\n'


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_params_file_is_an_error(tmp_path, text):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=r"params\.yaml: params file is empty"):
        load_params(f)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("prepare.max_skip_rate", ".nan", r"prepare\.max_skip_rate must be a finite number \(got nan\)"),
        ("prepare.max_skip_rate", "1.5", r"prepare\.max_skip_rate must be >= 0 and <= 1 \(got 1\.5\)"),
        ("label.val_fraction", "1.5", r"label\.val_fraction must be >= 0 and < 1 \(got 1\.5\)"),
        ("label.val_fraction", "1", r"label\.val_fraction must be >= 0 and < 1 \(got 1\.0\)"),
        ("train.batch_size", "0", r"train\.batch_size must be >= 1 \(got 0\)"),
        ("train.batch_size", "-4", r"train\.batch_size must be >= 1 \(got -4\)"),
        ("train.grad_accum", "0", r"train\.grad_accum must be >= 1 \(got 0\)"),
        ("train.epochs", "-1", r"train\.epochs must be >= 1 \(got -1\)"),
        ("train.lr", ".nan", r"train\.lr must be a finite number \(got nan\)"),
        ("train.lr", ".inf", r"train\.lr must be a finite number \(got inf\)"),
        ("train.lr", "0", r"train\.lr must be > 0 \(got 0\.0\)"),
        ("loss.lambda_r", ".nan", r"loss\.lambda_r must be a finite number"),
        ("loss.lambda_r", "-.inf", r"loss\.lambda_r must be a finite number \(got -inf\)"),
        ("loss.temperature", ".inf", r"loss\.temperature must be a finite number \(got inf\)"),
        ("loss.temperature", "0", r"loss\.temperature must be > 0"),
        ("backbone.tiny.num_kv_heads", "0", r"backbone\.tiny\.num_kv_heads must be >= 1 \(got 0\)"),
        ("train.trainable_layers", "-1", r"train\.trainable_layers must be >= 0 \(got -1\)"),
        ("label.selfrag_negative_window", "[0.5, .nan]", r"label\.selfrag_negative_window must be a finite number"),
        ("label.selfrag_negative_window", "[0.9, 0.5]", r"label\.selfrag_negative_window must be \[lo, hi\]"),
        ("train_data.tasks", "[multihopp]", r"train_data\.tasks must name one or more of"),
        ("annotate.max_attempts", "0", r"annotate\.max_attempts must be >= 1"),
        ("train_data.max_examples_by_task", "{multihop: -1}", r"train_data\.max_examples_by_task\.multihop must be >= 0"),
        ("train_data.val_max_examples_by_task", "{entity_linking: -2}", r"train_data\.val_max_examples_by_task\.entity_linking must be >= 0"),
        ("train_data.val_max_examples_by_task", "{linking: 5}", r"train_data\.val_max_examples_by_task: unknown task 'linking'"),
        ("label.val_count_by_task", "{multihop: -1}", r"label\.val_count_by_task\.multihop must be >= 0"),
        ("label.val_count_by_task", "{hotpot: 40}", r"label\.val_count_by_task: unknown task 'hotpot'"),
        ("train_data.max_examples_by_task", "{multhop: 5}", r"train_data\.max_examples_by_task: unknown task 'multhop'"),
        ("train_data.max_examples_by_task", "[5]", r"train_data\.max_examples_by_task: expected a mapping"),
        ("train_data.max_examples_by_task", "{multihop: many}", r"train_data\.max_examples_by_task\.multihop: expected int"),
        ("distributed.num_workers", "0", r"distributed\.num_workers must be >= 1"),
    ],
)
def test_out_of_range_numbers_name_the_key(key, value, message):
    """As `-S key=value` gives them (YAML: `.nan`, `.inf`), against the repository's params.yaml."""
    with pytest.raises(ConfigError, match=message) as e:
        load_params(ROOT / "params.yaml", parse_overrides([f"{key}={value}"]))
    assert str(e.value).startswith(f"{ROOT / 'params.yaml'}: ")


def test_ranges_hold_for_objects_built_in_code_too():
    with pytest.raises(ConfigError, match=r"train\.grad_accum must be >= 1 \(got 0\)"):
        C.TrainConfig(grad_accum=0)
    with pytest.raises(ConfigError, match=r"backbone\.tiny\.num_kv_heads must be >= 1"):  # not ZeroDivisionError
        C.TinyBackboneConfig(num_kv_heads=0)


def _sections():
    hints = typing.get_type_hints(C.Params)
    todo = [(f.name, hints[f.name]) for f in dataclasses.fields(C.Params) if dataclasses.is_dataclass(hints[f.name])]
    while todo:
        name, cls = todo.pop()
        yield name, cls
        sub = typing.get_type_hints(cls)
        todo += [(f"{name}.{f.name}", sub[f.name]) for f in dataclasses.fields(cls) if dataclasses.is_dataclass(sub[f.name])]


def test_every_numeric_setting_documents_its_range():
    """Each int/float field (serve is another section's business) carries a range, stated in its help."""
    missing = []
    for name, cls in _sections():
        if name == "serve":
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float, list[float]):
                bounds = f.metadata.get("range")
                if not bounds or "[" not in f.metadata["help"]:
                    missing.append(f"{name}.{f.name}")
    assert missing == []


def test_a_key_given_twice_is_an_error_naming_file_and_line(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: line 4: key 'lr' given twice \(first at line 2\)"):
        load_params(f)
    f.write_text("train:\n  lr: 0.1\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"line 3: key 'train' given twice"):
        load_params(f)


def test_a_key_given_twice_in_a_profile_names_the_profile(tmp_path):
    (tmp_path / "params.yaml").write_text("profile: p\n")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text("loss:\n  kind: bpr\n  kind: info_nce\n")
    with pytest.raises(ConfigError, match=r"profiles/p\.yaml: line 3: key 'kind' given twice"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    "text, where",
    [
        ("train:\n  lr: 0.1\n\tepochs: 2\n", r"line 3 column 1"),  # a tab: ScannerError
        ("train: [1, 2\n", r"line 2 column 1"),  # unclosed flow sequence: ParserError
        ("train:\n  lr: 'open\n", r"line 3 column 1"),
    ],
)
def test_yaml_errors_name_file_and_line(tmp_path, text, where):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=rf"params\.yaml: invalid YAML: {where}: ") as e:
        load_params(f)
    assert e.value.__cause__ is None  # no YAML traceback: the message is the whole story


@pytest.mark.parametrize("override", ["prepare.out_dir=", "label.out_dir=.", "train.output_dir=/", "evaluate.out_dir=./"])
def test_an_output_folder_that_is_the_project_root_is_refused(override):
    """An empty `-S prepare.out_dir=` used to write the stage's outputs into the project root, exit 0."""
    from onegen_core.config import ConfigError, load_params, parse_overrides

    with pytest.raises(ConfigError, match="an output folder must name a folder of its own"):
        load_params(ROOT / "params.yaml", parse_overrides([override]))


def test_the_same_override_twice_is_an_error_as_in_yaml():
    from onegen_core.config import ConfigError, parse_overrides

    with pytest.raises(ConfigError, match=r"override 'train.lr' is given twice \(0.001, then '2e-3'\)"):
        parse_overrides(["train.lr=1e-3", "train.lr=2e-3"])
    assert parse_overrides(["train.lr=1e-3", "train.epochs=2"]) == {"train.lr": 0.001, "train.epochs": 2}


def test_train_refuses_an_empty_training_file_before_starting_anything(tmp_path):
    from onegen_core.config import load_params
    from tasks.train import run

    empty = tmp_path / "train.jsonl"
    empty.write_text("\n  \n")
    p = load_params(ROOT / "params.yaml", {"train_data.train_file": str(empty),
                                           "distributed.storage_path": str(tmp_path / "ray")})
    with pytest.raises(ValueError, match="train.jsonl: the training file holds no example"):
        run(p)
    assert not (tmp_path / "ray").exists()  # no run folder, no Ray
    with pytest.raises(FileNotFoundError, match="training file missing"):
        run(load_params(ROOT / "params.yaml", {"train_data.train_file": str(tmp_path / "none.jsonl")}))
