"""The efficiency benchmark's exact counts (never its timings): what each method feeds the model."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workload(char_tokenizer, shared_data):
    from bench.efficiency import build_workload
    from onegen_core.config import TinyBackboneConfig
    from onegen_core.method.backbone import build_tiny_backbone
    from tasks.adapters.baselines import MiniLMEncoder

    cfg = TinyBackboneConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             max_position_embeddings=8192)
    lm = build_tiny_backbone(cfg, len(char_tokenizer), seed=0).eval()
    return lm, build_workload(char_tokenizer, lm, n_docs=20, minilm=MiniLMEncoder())


def test_rag_counts(workload):
    from bench.efficiency import run_rag

    lm, w = workload
    one, retrieved = run_rag("onegen", lm, w, rounds=3, qlen=7, out_len=4, seed=1)
    grit, _ = run_rag("grit", lm, w, rounds=3, qlen=7, out_len=4, seed=1)
    pipe, _ = run_rag("pipeline", lm, w, rounds=3, qlen=7, out_len=4, seed=1)
    low, _ = run_rag("lower", lm, w, rounds=3, qlen=7, out_len=4, seed=1, lower_docs=retrieved)
    assert len(retrieved) == 3 and one.searches == 3
    # OneGen: no pass spent on query vectors; its only extra vs the lower bound is the [RQ] token itself
    assert one.query_encoder_passes == 0
    assert one.forward_passes - low.forward_passes == 3
    assert one.tokens_processed - low.tokens_processed == 3
    # GRIT re-encodes the whole context once per retrieval; the pipeline runs its retriever once
    assert grit.forward_passes == one.forward_passes and grit.query_encoder_passes == 3
    assert grit.query_encoder_tokens > one.tokens_processed
    assert pipe.query_encoder_passes == 3 and pipe.searches == 3


def test_entity_linking_counts(workload):
    from bench.efficiency import run_el

    lm, w = workload
    one = run_el("onegen", lm, w, sentence_len=60, mentions=4, seed=2)
    low = run_el("lower", lm, w, sentence_len=60, mentions=4, seed=2)
    pipe = run_el("pipeline", lm, w, sentence_len=60, mentions=4, seed=2)
    # each [RQ] is one more decode step, and <CON> rides in that same pass: +1 pass, +2 tokens per mention
    assert one.forward_passes == low.forward_passes + 4
    assert one.tokens_processed == low.tokens_processed + 8
    assert one.searches == 4 and one.query_encoder_passes == 0
    # the pipeline detects like the lower bound, then prefills one QA prompt per mention
    assert pipe.forward_passes == low.forward_passes + 4
    assert pipe.tokens_processed > low.tokens_processed + 4 * 60
