"""The single-process path of the one training loop (`onegen_core.training.loop.train`) end to end on
the shared HotpotQA sample: a few steps, a saved checkpoint that reloads with the OneGen tokens."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.mark.slow
def test_single_process_training_writes_a_loadable_checkpoint(tmp_path, shared_data):
    from onegen_core.config import BackboneConfig, LossConfig, ReconstructConfig, TinyBackboneConfig, TrainConfig
    from onegen_core.data import load_hotpotqa
    from onegen_core.evaluation.retrieval import retrieval_recall
    from onegen_core.method.backbone import build_backbone, checkpoint_id, load_pretrained, save_checkpoint
    from onegen_core.method.collator import OneGenCollator
    from onegen_core.method.model import OneGenModel
    from onegen_core.prepare.multihop import hops_from_supporting_facts, reconstruct_multihop
    from onegen_core.training.dataset import tokenizer_texts
    from onegen_core.training.loop import train

    recs = load_hotpotqa(shared_data / "hotpotqa" / "train_sample.json")[:10]
    exs = [reconstruct_multihop(r, hops_from_supporting_facts(r), ReconstructConfig(max_negative_paragraphs=2)) for r in recs]
    cfg = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=64, intermediate_size=128, num_layers=2))
    lm, tok, ids, meta = build_backbone(cfg, tokenizer_texts(exs, []), vocab_size=1500)
    model = OneGenModel(lm, LossConfig())
    collator = OneGenCollator(tok, max_length=512, max_doc_length=256)
    seen = []
    hist = train(model, collator, exs, TrainConfig(max_steps=3, batch_size=2, epochs=1), on_step=seen.append)
    assert [m.step for m in hist] == [0, 1, 2] and seen == hist
    assert all(m.tokens > 0 and m.lm_loss > 0 for m in hist)
    out = save_checkpoint(lm, tok, tmp_path / "ckpt", {**meta, "steps": len(hist)})
    lm2, tok2, ids2 = load_pretrained(str(out))
    assert tok2.convert_tokens_to_ids("[RQ]") == ids2.rq == ids.rq and len(checkpoint_id(out)) == 16
    assert json.loads((out / "onegen.json").read_text())["steps"] == 3
    # the reloaded weights score the same as the trained ones
    a = retrieval_recall(model, OneGenCollator(tok, 512, 256, share_negatives=False), exs[:4])
    b = retrieval_recall(OneGenModel(lm2, LossConfig()), OneGenCollator(tok2, 512, 256, share_negatives=False), exs[:4])
    assert a == b and a["queries"] > 0


def test_training_file_must_exist(tmp_path):
    from onegen_core.training.dataset import load_examples

    with pytest.raises(FileNotFoundError, match="dvc repro label"):
        load_examples(tmp_path / "none.jsonl", ["multihop"])
