"""DVC stage `annotate`: decompose every training question (App. G.1, Fig. 13) with the configured
backend — an OpenAI-compatible endpoint (Qwen2-72B-Instruct on vLLM), a local HF model, or the
embedded supporting-facts heuristic — into `decompositions.jsonl`.

LLM answers go to an append-only cache keyed by example id + prompt hash (`cache.jsonl`, a DVC
`persist` output): an interrupted run resumes where it stopped and never pays twice for an answer.
The API key is read from the environment variable named in params and never logged or written.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from onegen_core.config import AnnotateConfig
from onegen_core.data import load_hotpotqa
from onegen_core.prepare.decomposition import heuristic_decomposition
from tasks.adapters.annotation_cache import AnnotationCache, cache_key
from tasks.adapters.annotation_runner import annotate
from tasks.adapters.annotators import make_backend
from tasks.stage_common import stage_params, write_json, write_jsonl

log = logging.getLogger("onegen.annotate")


def backend_settings(cfg: AnnotateConfig) -> dict:
    if cfg.backend == "openai":
        return dict(base_url=cfg.base_url, model=cfg.model, api_key_env=cfg.api_key_env, timeout_s=cfg.timeout_s,
                    max_retries=cfg.max_retries, backoff_s=cfg.backoff_s, max_backoff_s=cfg.max_backoff_s,
                    temperature=cfg.temperature, max_tokens=cfg.max_tokens, max_concurrency=cfg.max_concurrency)
    if cfg.backend == "hf":
        if not cfg.hf_model_path:
            raise ValueError("annotate.hf_model_path must name a local model directory for backend 'hf'")
        return dict(model_path=cfg.hf_model_path, max_new_tokens=cfg.max_tokens)
    return {}


def run(cfg: AnnotateConfig, records_path: str) -> dict:
    from tqdm.auto import tqdm

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache.jsonl").touch()  # exists even when the heuristic needs no cache (a DVC output)
    records = load_hotpotqa(records_path)
    backend = make_backend(cfg.backend, **backend_settings(cfg))
    counts: Counter = Counter()
    decompositions = []
    if backend is None:
        decompositions = [heuristic_decomposition(r) for r in records]
        counts["heuristic"] = len(records)
        report = {"backend": "heuristic", "total": len(records), **counts}
    else:
        bar = tqdm(total=len(records), desc="annotate", unit="q")
        with AnnotationCache(out / "cache.jsonl") as cache:
            runner = None
            if cfg.executor == "ray":
                from tasks.adapters.annotation_runner import ray_runner

                runner = ray_runner(cfg.ray_address)
            rep = annotate(records, backend, cache, cfg.max_attempts, max_concurrency=cfg.max_concurrency,
                           on_progress=lambda r: bar.update(r.done - bar.n), runner=runner,
                           prompt_style=cfg.prompt, structured=cfg.structured_output)
            bar.close()
            for r in records:
                result = cache.get(cache_key(r, backend, cfg.prompt, cfg.structured_output))
                if result is not None and result.status == "accepted":
                    decompositions.append(result.decomposition)
                    counts["accepted"] += 1
                elif cfg.on_reject == "heuristic":
                    decompositions.append(heuristic_decomposition(r))
                    counts["fallback_heuristic_" + ("error" if result is None else "rejected")] += 1
                else:
                    counts["dropped_" + ("error" if result is None else "rejected")] += 1
        report = {"backend": f"{backend.name}/{backend.model}", "prompt": cfg.prompt,
                  "structured_output": cfg.structured_output, **rep.to_dict(),
                  "outcome": dict(counts)}
        if cfg.executor == "local" and getattr(backend, "stats", None) is not None:
            report["server"] = dict(sorted(backend.stats.items()))  # HTTP retries, answers cut at max_tokens
    # a cache written before redaction existed may hold an echoed key: what goes out is redacted again
    redact = getattr(backend, "redact", None) or (lambda text: text)
    rows = [json.loads(redact(json.dumps(d.to_dict(), ensure_ascii=False))) for d in decompositions]
    write_jsonl(out / "decompositions.jsonl", rows)
    write_json(out / "report.json", json.loads(redact(json.dumps(report, default=str))))
    log.info("annotated %d questions: %s", len(records), dict(counts))
    return report


def main(argv: list[str] | None = None) -> None:
    p = stage_params(__doc__, argv)
    run(p.annotate, str(Path(p.prepare.out_dir) / "multihop_train.jsonl"))


if __name__ == "__main__":
    main()
