from __future__ import annotations

import math

import pytest
import torch

from onegen_core.config import LossConfig, TrainConfig
from onegen_core.evaluation.held_out import held_out_losses
from onegen_core.evaluation.retrieval import retrieval_recall
from onegen_core.method.collator import OneGenCollator
from onegen_core.method.model import OneGenModel
from onegen_core.method.segments import Document, Query, Retrieval, Text, TrainingExample
from onegen_core.training.loop import data_order, micro_batches_for_step, train
from onegen_core.training.schedule import lr_at

WORDS = ["cat", "dog", "owl", "elk", "bee", "ant", "yak", "emu"]


def lookup_examples() -> list[TrainingExample]:
    """Query i must retrieve the document that names the same animal: learnable in a few steps."""
    docs = tuple(Document(w, (f"the {w} lives here",)) for w in WORDS)
    return [
        TrainingExample(f"e{i}", "t", (Text(f"where is the {w}?", False), Retrieval("q"), Text(f" {w} found", True)),
                        (Query("q", (w,), tuple(x for x in WORDS if x != w)),), docs)
        for i, w in enumerate(WORDS)
    ]


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(55, 100, 1.0, 10, 0.0) == pytest.approx(0.5)


def test_data_order_depends_on_seed_and_epoch_only():
    assert data_order(10, 3, 1) == data_order(10, 3, 1)
    assert sorted(data_order(10, 3, 1)) == list(range(10))
    assert data_order(10, 3, 1) != data_order(10, 3, 2)


def test_micro_batches():
    cfg = TrainConfig(batch_size=2, grad_accum=2)
    assert micro_batches_for_step(list(range(9)), 0, cfg) == [(0, [0, 1]), (1, [2, 3])]
    assert micro_batches_for_step(list(range(9)), 1, cfg) == [(0, [4, 5]), (1, [6, 7])]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bpr", "info_nce"])
def test_training_lowers_both_losses_and_learns_retrieval(char_tokenizer, tiny_lm, kind):
    exs = lookup_examples()
    col = OneGenCollator(char_tokenizer, max_length=128, share_negatives=False)
    model = OneGenModel(tiny_lm, LossConfig(kind=kind, negatives_per_positive=7, positives_per_query=1))
    before = held_out_losses(model, col, exs, seed=0)
    recall_before = retrieval_recall(model, col, exs)["recall_at_1"]
    cfg = TrainConfig(lr=3e-3, epochs=80, batch_size=4, grad_accum=2, warmup_ratio=0.0, seed=0)
    hist = train(model, col, exs, cfg)
    assert len(hist) == 80 and all(math.isfinite(m.loss) for m in hist)
    after = held_out_losses(model, col, exs, seed=0)
    recall_after = retrieval_recall(model, col, exs)["recall_at_1"]
    assert after["lm_loss"] < 0.8 * before["lm_loss"]
    assert after["retrieval_loss"] < 0.8 * before["retrieval_loss"]
    assert recall_after > max(recall_before, 0.5)


def test_training_is_deterministic(char_tokenizer):
    from onegen_core.config import TinyBackboneConfig
    from onegen_core.method.backbone import build_tiny_backbone

    cfg_m = TinyBackboneConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2)
    losses = []
    for _ in range(2):
        lm = build_tiny_backbone(cfg_m, len(char_tokenizer), seed=0)
        col = OneGenCollator(char_tokenizer, max_length=128)
        hist = train(OneGenModel(lm, LossConfig()), col, lookup_examples(), TrainConfig(epochs=2, batch_size=4))
        losses.append([m.loss for m in hist])
    assert losses[0] == losses[1]
    torch.manual_seed(0)


def test_ranks_split_the_single_process_micro_batches_with_the_same_indices():
    from onegen_core.training.loop import steps_per_epoch

    order = list(range(40))
    single = TrainConfig(batch_size=2, grad_accum=4)
    ranked = TrainConfig(batch_size=2, grad_accum=2)
    for step in range(3):
        whole = micro_batches_for_step(order, step, single)
        split = [mb for r in range(2) for mb in micro_batches_for_step(order, step, ranked, rank=r, world_size=2)]
        assert split == whole
    assert steps_per_epoch(41, ranked, world_size=2) == 5  # only full global batches of 8
    assert steps_per_epoch(41, ranked) == 10  # one process keeps the short last micro-batch


def test_linear_schedule_reaches_the_floor():
    from onegen_core.training.schedule import lr_at

    assert lr_at(0, 10, 1.0, 0, 0.0, "linear") == 1.0
    assert lr_at(5, 10, 1.0, 0, 0.0, "linear") == 0.5
    assert lr_at(10, 10, 1.0, 0, 0.0, "linear") == 0.0


def test_initial_backbone_is_rebuilt_when_its_tokenizer_texts_change(tmp_path):
    """The tiny backbone's tokenizer is trained on the examples used, so which tasks (and how many
    examples of each) are trained on must change its key: a reused init from other texts truncates
    and tokenises differently."""
    from pathlib import Path

    from onegen_core.config import load_params
    from tasks.adapters.run_fingerprint import initial_backbone_key

    root = Path(__file__).resolve().parents[2]
    f = tmp_path / "train.jsonl"
    f.write_text("{}\n")
    base = {"train_data.train_file": str(f)}
    a = initial_backbone_key(load_params(root / "params.yaml", {**base, "train_data.tasks": ["multihop"]}))
    b = initial_backbone_key(load_params(root / "params.yaml", {**base, "train_data.tasks": ["multihop", "entity_linking"]}))
    c = initial_backbone_key(load_params(root / "params.yaml", {**base, "train_data.max_examples_per_task": 7}))
    assert len({a, b, c}) == 3
    assert a == initial_backbone_key(load_params(root / "params.yaml", {**base, "train_data.tasks": ["multihop"]}))


def test_retrieval_recall_splits_first_and_later_rq(char_tokenizer, tiny_lm, shared_data):
    """Recall@1 is the query-weighted mean of its first-[RQ] and later-[RQ] parts, and each
    two-hop question contributes exactly one first [RQ]."""
    from onegen_core.config import ReconstructConfig
    from onegen_core.data import load_hotpotqa
    from onegen_core.prepare.multihop import hops_from_supporting_facts, reconstruct_multihop

    recs = load_hotpotqa(shared_data / "hotpotqa" / "train_sample.json")[:6]
    cfg = ReconstructConfig(max_negative_paragraphs=2)
    exs = [reconstruct_multihop(r, hops_from_supporting_facts(r), cfg, 0) for r in recs]
    col = OneGenCollator(char_tokenizer, max_length=100_000, max_doc_length=100_000, share_negatives=False)
    out = retrieval_recall(OneGenModel(tiny_lm, LossConfig()), col, exs)
    n_first = sum(1 for e in exs if e.queries)
    n_later = sum(len(e.queries) for e in exs) - n_first
    assert out["queries"] == n_first + n_later and n_later > 0
    weighted = out["recall_at_1_first_rq"] * n_first + out["recall_at_1_later_rq"] * n_later
    assert weighted == pytest.approx(out["recall_at_1"] * out["queries"])


def test_per_task_figures_from_one_pass_equal_separate_calls(char_tokenizer, tiny_lm, shared_data):
    """`by_task=True` gives each task the figures a call on that task's examples alone gives (the open
    measure ranks that task's units only), from one pass over all of them."""
    from onegen_core.config import ReconstructConfig
    from onegen_core.data import load_hotpotqa
    from onegen_core.prepare.entity_linking import Mention, reconstruct_entity_linking
    from onegen_core.prepare.multihop import hops_from_supporting_facts, reconstruct_multihop

    recs = load_hotpotqa(shared_data / "hotpotqa" / "train_sample.json")[:3]
    mh = [reconstruct_multihop(r, hops_from_supporting_facts(r), ReconstructConfig(max_negative_paragraphs=1), 0)
          for r in recs]
    kb = {"Q90": ("Paris", "capital of France"), "Q142": ("France", "country"), "Q1": ("Paris Hilton", "person")}
    el = [reconstruct_entity_linking(f"w{i}", "Paris is in France.", [Mention(0, 5, "Q90", ("Q1",)),
                                                                       Mention(12, 18, "Q142", ("Q90",))], kb)
          for i in range(2)]
    col = OneGenCollator(char_tokenizer, max_length=100_000, max_doc_length=100_000, share_negatives=False)
    model = OneGenModel(tiny_lm, LossConfig())
    both = retrieval_recall(model, col, [el[0], *mh, el[1]], batch_size=2, by_task=True)
    for task, exs in (("multihop", mh), ("entity_linking", el)):
        alone = retrieval_recall(model, col, exs, batch_size=2)
        for k in ("recall_at_1", "recall_at_5", "doc_recall_at_1", "open_recall_at_1", "open_candidates", "queries"):
            assert both[f"{task}/{k}"] == pytest.approx(alone[k]), (task, k)
    assert both["queries"] == both["multihop/queries"] + both["entity_linking/queries"]
    assert both["open_candidates"] == both["multihop/open_candidates"] + both["entity_linking/open_candidates"]
