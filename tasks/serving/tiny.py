"""A tiny trained checkpoint and its index, built in seconds: what the serving tests, the browser test
and `bench/serve_load.py` run against.

A ~100k-parameter Qwen2 with a BPE trained on a handful of hand-written examples is trained (the one
training loop, `onegen_core.training.loop.train`) until it has memorised them: two multi-hop questions
(R→G: `[RQ]`, a pasted passage, `[RQ]`, a passage, `<FINAL-ANSWER>`) and two sentences to link (G→R:
`<MENTION>…</MENTION>[RQ]<CON>`). Its passages and entities are then encoded by `onegen index add`'s
code path (`tasks.serving.corpus`), so the index carries the checkpoint's stamp like any other.
The model learns the formats, not language: it exists to exercise serving with a real model, a real
LanceDB index and real retrievals, never to be good.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("onegen.serve")

PASSAGES = [
    {"id": "arthurs-magazine", "title": "Arthur's Magazine",
     "text": "Arthur's Magazine (1844-1846) was an American literary periodical published in Philadelphia. "
             "It was founded by Timothy Shay Arthur."},
    {"id": "first-for-women", "title": "First for Women",
     "text": "First for Women is a woman's magazine published by Bauer Media Group in the USA. "
             "The magazine was started in 1989."},
    {"id": "scott-derrickson", "title": "Scott Derrickson",
     "text": "Scott Derrickson is an American director. He lives in Los Angeles."},
    {"id": "ed-wood", "title": "Ed Wood",
     "text": "Edward Davis Wood Jr. was an American filmmaker. He made low-budget films."},
    {"id": "honolulu-city", "title": "Honolulu",
     "text": "Honolulu is the capital of Hawaii. It lies on the island of Oahu."},
]
ENTITIES = [
    {"id": "Q76", "title": "Barack Obama", "text": "44th president of the United States"},
    {"id": "Q649593", "title": "Barack Obama Sr.", "text": "Kenyan economist, father of Barack Obama"},
    {"id": "Q18094", "title": "Honolulu", "text": "capital city of the US state of Hawaii"},
    {"id": "Q90", "title": "Paris", "text": "capital city of France"},
    {"id": "Q142", "title": "France", "text": "country in Western Europe"},
]
QUESTIONS = [
    ("Which magazine was started first, Arthur's Magazine or First for Women?",
     ["arthurs-magazine", "first-for-women"], "Arthur's Magazine"),
    ("Were Scott Derrickson and Ed Wood of the same nationality?", ["scott-derrickson", "ed-wood"], "yes"),
]
LINK_TEXTS = [
    ("Obama was born in Honolulu.", [(0, 5, "Q76", ("Q649593",)), (18, 26, "Q18094", ())]),
    ("Paris is the capital of France.", [(0, 5, "Q90", ()), (24, 30, "Q142", ())]),
]


def _examples(docs: dict):
    from onegen_core.method.prompts import paste_paragraph, question_prompt
    from onegen_core.method.segments import Query, Retrieval, Text, TrainingExample
    from onegen_core.method.tokens import FINAL_CLOSE, FINAL_OPEN
    from onegen_core.prepare.entity_linking import Mention, reconstruct_entity_linking

    out = []
    for n, (question, hops, answer) in enumerate(QUESTIONS):
        segments: list = [Text(question_prompt(question), generated=False)]
        queries = []
        others = [u for d in docs.values() for u in d.unit_ids() if d.id not in hops]
        for k, doc_id in enumerate(hops):
            d = docs[doc_id]
            segments += [Retrieval(f"hop{k}"), Text(paste_paragraph(d.title, "".join(d.units)), generated=False)]
            queries.append(Query(f"hop{k}", tuple(d.unit_ids()), tuple(others)))
        segments.append(Text(f"{FINAL_OPEN}{answer}{FINAL_CLOSE}", generated=True))
        out.append(TrainingExample(id=f"q{n}", task="multihop", segments=tuple(segments), queries=tuple(queries),
                                   documents=tuple(docs.values())))
    kb = {e["id"]: (e["title"], e["text"]) for e in ENTITIES}
    for n, (text, mentions) in enumerate(LINK_TEXTS):
        out.append(reconstruct_entity_linking(f"el{n}", text, [Mention(*m) for m in mentions], kb))
    return out


def build_tiny_project(root: str | Path, steps: int = 120, seed: int = 0) -> dict[str, str]:
    """Train the tiny checkpoint into `root/ckpt` and index its passages (`units`) and entities
    (`entities`) into `root/index`. Idempotent: a finished `root` (its `tiny.json`) is reused.
    Returns {"checkpoint", "index", "passages", "entities"} (paths)."""
    import torch

    root = Path(root)
    done = root / "tiny.json"
    if done.is_file():
        return json.loads(done.read_text())
    root.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    # one intra-op thread: the tensors are tiny, and on a busy machine idle-spinning OpenMP workers make
    # a second thread ~50x slower (20 steps: 0.6 s with 1 thread, 30 s with 2 beside a training job)
    torch.set_num_threads(1)
    try:
        return _build(root, done, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _build(root: Path, done: Path, steps: int, seed: int) -> dict[str, str]:
    import torch

    from onegen_core.config import BackboneConfig, LossConfig, TinyBackboneConfig, TrainConfig
    from onegen_core.method.backbone import build_backbone, checkpoint_id, save_checkpoint
    from onegen_core.method.collator import OneGenCollator
    from onegen_core.method.model import OneGenModel
    from onegen_core.training.dataset import tokenizer_texts
    from onegen_core.training.loop import train
    from tasks.serving.corpus import add_documents, read_documents

    paths = {"checkpoint": str(root / "ckpt"), "index": str(root / "index"),
             "passages": str(root / "passages.jsonl"), "entities": str(root / "entities.jsonl")}
    for key, rows in (("passages", PASSAGES), ("entities", ENTITIES)):
        Path(paths[key]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    passages = {d.id: d for d in read_documents(paths["passages"], "sentence")}
    examples = _examples(passages)

    torch.manual_seed(seed)
    cfg = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                                                 num_kv_heads=2, max_position_embeddings=1024))
    texts = list(tokenizer_texts(examples, [])) * 4
    lm, tok, _, meta = build_backbone(cfg, texts, vocab_size=600, min_frequency=1, seed=seed)
    model = OneGenModel(lm, LossConfig(kind="info_nce", lambda_r=1.0, temperature=0.1))
    collator = OneGenCollator(tok, max_length=512, max_doc_length=128)
    hist = train(model, collator, examples, TrainConfig(lr=1e-2, max_steps=steps, epochs=10_000,
                                                        batch_size=len(examples), warmup_ratio=0.05,
                                                        log_every=10_000, seed=seed))
    log.info("tiny checkpoint: %d steps, last lm loss %.3f, retrieval loss %.3f", len(hist), hist[-1].lm_loss,
             hist[-1].retrieval_loss)
    lm.eval()
    save_checkpoint(lm, tok, paths["checkpoint"], {**meta, "steps": len(hist), "purpose": "serving tests"})
    ck = checkpoint_id(paths["checkpoint"])
    enc_collator = OneGenCollator(tok, max_length=256, max_doc_length=256)
    for key, table, granularity in (("passages", "units", "sentence"), ("entities", "entities", "document")):
        add_documents(model, enc_collator, read_documents(paths[key], granularity), paths["index"], table,
                      paths["checkpoint"], ck, batch_size=8, ann_min_rows=10**9)
    done.write_text(json.dumps(paths))
    return paths
