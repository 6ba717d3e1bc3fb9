"""Helpers the stage tests share."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT


def encode_setup(tmp_path, tok, lm, shared_data, n_questions: int, max_doc_length: int):
    """A saved checkpoint and an EncodeConfig over the first `n_questions` HotpotQA dev questions."""
    from onegen_core.config import EncodeConfig
    from onegen_core.method.backbone import save_checkpoint

    tmp_path.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(lm, tok, tmp_path / "ckpt", {"tokenizer": "bpe-trained"})
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps(json.loads((shared_data / "hotpotqa" / "dev_distractor_sample.json").read_text())[:n_questions]))
    return EncodeConfig(checkpoint=str(ckpt), uri=str(tmp_path / "idx"), hotpotqa=[str(sample)], batch_size=4,
                        max_doc_length=max_doc_length, report_path=str(tmp_path / "enc.json"))


def table_rows(uri: str, table: str) -> dict[str, tuple]:
    """id → (doc_id, title, text, doc_text, checkpoint, vector) of every row of a LanceDB table."""
    import lancedb
    import numpy as np

    t = lancedb.connect(uri).open_table(table).to_arrow().to_pylist()
    return {r["id"]: (r["doc_id"], r["title"], r["text"], r["doc_text"], r["checkpoint"], np.array(r["vector"]))
            for r in t}


@pytest.fixture()
def small_inputs(tmp_path, shared_data):
    from onegen_core.data import load_elevant, load_hotpotqa, write_kb
    from onegen_core.data.multihop import record_to_dict
    from onegen_core.prepare.entity_kb import build_kb

    hot = tmp_path / "hot.jsonl"
    recs = load_hotpotqa(shared_data / "hotpotqa" / "dev_distractor_sample.json")[:3]
    hot.write_text("".join(json.dumps(record_to_dict(r)) + "\n" for r in recs))
    wiki = tmp_path / "wiki.jsonl"
    wiki.write_text("".join((shared_data / "2wikimultihopqa" / "dev_sample.jsonl").read_text().splitlines(True)[:2]))
    el = tmp_path / "spotlight.benchmark.jsonl"
    lines = (shared_data / "entity_linking" / "elevant" / "spotlight.benchmark.jsonl").read_text().splitlines(True)
    el.write_text("".join(lines[:2]))
    entities, _ = build_kb(load_elevant(el), {})
    kb = tmp_path / "kb.jsonl"
    write_kb(kb, entities)
    return {"hot": hot, "wiki": wiki, "el": el, "kb": kb}


def evaluate_locally_and_on_ray(tmp_path, monkeypatch, tok, lm, inputs: dict, ray_settings: dict) -> dict:
    """Encode `inputs` (see `small_inputs`) with a checkpoint of `lm`, evaluate it with `evaluate.executor`
    local and ray (`ray_settings`: ray_data.* and distributed.ray_address overrides), each with its own result
    cache, and assert that both give the same predictions, metrics and ELEVANT export; returns both results."""
    pytest.importorskip("lancedb")
    from onegen_core.config import EncodeConfig, load_params
    from onegen_core.method.backbone import save_checkpoint
    from tasks import encode, evaluate

    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    ckpt = save_checkpoint(lm, tok, tmp_path / "ckpt", {"tokenizer": "char"})
    s = inputs
    encode.run(EncodeConfig(checkpoint=str(ckpt), uri=str(tmp_path / "idx"), hotpotqa=[str(s["hot"])],
                            wiki2=[str(s["wiki"])], kb=str(s["kb"]), max_doc_length=4096,
                            report_path=str(tmp_path / "enc.json")))
    common = {"profile": "tiny", "evaluate.checkpoint": str(ckpt), "evaluate.index_uri": str(tmp_path / "idx"),
              "evaluate.hotpotqa": str(s["hot"]), "evaluate.wiki2": str(s["wiki"]), "evaluate.elevant": [str(s["el"])],
              "evaluate.max_new_tokens": 24, "evaluate.max_retrievals": 2, "evaluate.el_max_chars": 300,
              "evaluate.el_max_retrievals": 6, "evaluate.baselines": [], "evaluate.log_mlflow": False,
              "evaluate.batch_size": 2, "evaluate.el_batch_size": 2, "prepare.out_dir": str(tmp_path / "prepared"),
              **ray_settings}
    runs = {}
    for executor in ("local", "ray"):
        # separate result caches: the Ray run must compute every piece itself
        (tmp_path / executor).mkdir()
        monkeypatch.chdir(tmp_path / executor)
        p = load_params(ROOT / "params.yaml", {**common, "evaluate.executor": executor,
                                               "evaluate.out_dir": str(tmp_path / executor / "report"),
                                               "evaluate.metrics_path": str(tmp_path / executor / "evaluate.json")})
        runs[executor] = evaluate.run(p)
    monkeypatch.chdir(tmp_path)
    local, on_ray = runs["local"], runs["ray"]
    assert on_ray["multihop"] == local["multihop"]
    for key in ("articles", "windows", "gold_mentions", "windows_by_finish_reason", "systems", "elevant_rules",
                "ed_mentions_truncated"):
        assert on_ray["entity_linking"][key] == local["entity_linking"][key], key
    passes = ("forward_passes", "searches", "draft_tokens_fed", "draft_tokens_kept")
    assert ({k: on_ray["entity_linking"]["linking_pass"][k] for k in passes}
            == {k: local["entity_linking"]["linking_pass"][k] for k in passes})
    for f in sorted((tmp_path / "local" / "report" / "predictions").iterdir()):
        assert (tmp_path / "ray" / "report" / "predictions" / f.name).read_text() == f.read_text(), f.name
    linked = "elevant/onegen.spotlight.linked_articles.jsonl"
    assert (tmp_path / "ray" / "report" / linked).read_text() == (tmp_path / "local" / "report" / linked).read_text()
    return runs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, shared_data):
    from onegen_core.config import ReconstructConfig
    from onegen_core.data import load_hotpotqa
    from onegen_core.prepare.multihop import hops_from_supporting_facts, reconstruct_multihop

    d = tmp_path_factory.mktemp("train_data")
    recs = load_hotpotqa(shared_data / "hotpotqa" / "train_sample.json")[:28]
    cfg = ReconstructConfig(max_negative_paragraphs=3)
    exs = [reconstruct_multihop(r, hops_from_supporting_facts(r), cfg, 0) for r in recs]
    for name, part in (("train.jsonl", exs[:24]), ("val.jsonl", exs[24:])):
        (d / name).write_text("".join(json.dumps(e.to_dict()) + "\n" for e in part))
    return d


def params_for(data_dir: Path, work: Path, **over):
    """The tiny ZeRO-3 recipe the distributed train tests run (2 layers, 64-d, 4 steps), writing under `work`."""
    from onegen_core.config import load_params

    base = {
        "profile": "tiny",
        "backbone.tiny.hidden_size": 64, "backbone.tiny.intermediate_size": 128, "backbone.tiny.num_layers": 2,
        "tokenizer.vocab_size": 1500, "tokenizer.corpus": [],
        "train.batch_size": 2, "train.grad_accum": 1, "train.max_length": 512, "train.max_doc_length": 256,
        "train.lr": 2e-3, "train.epochs": 1, "train.max_steps": 4,
        "train.output_dir": str(work / "out"),
        "train_data.train_file": str(data_dir / "train.jsonl"), "train_data.val_file": str(data_dir / "val.jsonl"),
        "train_data.init_dir": str(data_dir / "init"), "train_data.eval_every": 100,
        "train_data.val_max_examples": 2, "train_data.metrics_path": str(work / "train.json"),
        "distributed.storage_path": str(work / "ray"), "distributed.checkpoint_every": 2,
        "distributed.keep_checkpoints": 5,
        "mlflow.tracking_uri": f"sqlite:///{work / 'mlruns.db'}", "mlflow.artifact_location": str(work / "art"),
    }
    base.update(over)
    return load_params(ROOT / "params.yaml", base)
