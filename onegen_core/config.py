"""Typed settings, read from `params.yaml` (the single source of settings).

Each section of params.yaml is one dataclass; each field carries its help text in `metadata["help"]`.
Loading is strict: an unknown key, a missing section or a value of the wrong type is an error that
names the key (`train.lr: expected float, got str 'fast'`). Derived values are methods, not fields.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


def _f(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,  # noqa: A002 - argparse's name
       le: float | None = None, lt: float | None = None) -> Any:
    """A field with its help text and, for numbers, its range (`ge`/`gt`/`le`/`lt`), which the section's
    `__post_init__` checks (`_Section`) and the help text states."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"help": f"{help} [{_describe(bounds)}]" if bounds else help, "range": bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


_OPS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
        "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def _describe(bounds: dict[str, float]) -> str:
    return " and ".join(f"{_OPS[k][0]} {b:g}" for k, b in bounds.items())


def _section_of(obj: Any) -> str:
    """The dotted params key of a section object (`train`, `backbone.tiny`), for error messages."""
    def walk(cls: type, prefix: str) -> str | None:
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls).get(f.name)
            if dataclasses.is_dataclass(tp):
                key = f"{prefix}{f.name}"
                if tp is type(obj):
                    return key
                found = walk(tp, key + ".")
                if found:
                    return found
        return None

    return walk(Params, "") or type(obj).__name__


def check_ranges(obj: Any) -> None:
    """Every float of a section is finite (NaN would switch a `>` gate off, inf would overflow later) and
    every number lies in its field's range; the error names the key (`train.batch_size must be >= 1`)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        items = value if isinstance(value, list) else [value]
        for v in items:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{_section_of(obj)}.{f.name} must be a finite number (got {v!r})")
        bounds = f.metadata.get("range") or {}
        if not bounds or isinstance(value, bool):
            continue
        for v in items:
            if not isinstance(v, (int, float)):
                continue
            for k, b in bounds.items():
                if not _OPS[k][1](v, b):
                    raise ConfigError(f"{_section_of(obj)}.{f.name} must be {_describe(bounds)} (got {v!r})")


class _Section:
    """Base of the section dataclasses: construction checks every range (`check_ranges`), whether the
    object comes from params.yaml or from code."""

    def __post_init__(self) -> None:
        check_ranges(self)
        check_output_dirs(self)


# Fields that name a folder a stage writes into: empty, `.` or `/` would write into the project root (or
# the filesystem's), mixing outputs with code.
_OUTPUT_DIR_FIELDS = ("out_dir", "output_dir")


def check_output_dirs(section: Any) -> None:
    """`ConfigError` for an output folder that is empty, the current directory or a filesystem root."""
    for name in _OUTPUT_DIR_FIELDS:
        value = getattr(section, name, None)
        if isinstance(value, str) and value.strip().rstrip("/") in ("", "."):
            where = type(section).__name__.removesuffix("Config").lower()
            raise ConfigError(f"{where}.{name} is {value!r}: an output folder must name a folder of its own, "
                              "not the current directory or a filesystem root")


_YAML11_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\Z")


def yaml11_float(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads `1e-05` — what `dvc exp run -S train.lr=1e-5` writes, and what users type
    after `-S` — as a string; such a string becomes the float it means. Anything else is returned as is."""
    if isinstance(value, str) and _YAML11_EXPONENT.match(value.strip()):
        return float(value)
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`-S KEY=VALUE` items, VALUE read as YAML ('2' -> 2, '[a, b]' -> list, '1e-3' -> 0.001, '' -> '')."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must be KEY=VALUE")
        k, v = item.split("=", 1)
        if k.strip() in out:  # as in YAML, a key is given once: which one should win is not ours to guess
            raise ConfigError(f"override {k.strip()!r} is given twice ({out[k.strip()]!r}, then {v!r}); give it once")
        out[k.strip()] = yaml11_float(yaml.safe_load(v)) if v.strip() else ""
    return out


class ConfigError(ValueError):
    pass


#: The tasks a training example can belong to (`TrainingExample.task`, `train_data.tasks`).
TASKS: tuple[str, ...] = ("multihop", "entity_linking", "selfrag")


@dataclass
class TinyBackboneConfig(_Section):
    architecture: Literal["qwen2", "llama"] = _f("qwen2", "decoder family of the embedded tiny model")
    hidden_size: int = _f(256, "model width", ge=1)
    intermediate_size: int = _f(688, "MLP width", ge=1)
    num_layers: int = _f(4, "decoder layers", ge=1)
    num_heads: int = _f(4, "attention heads", ge=1)
    num_kv_heads: int = _f(2, "key/value heads (grouped-query attention)", ge=1)
    max_position_embeddings: int = _f(4096, "longest sequence the rotary embedding is set up for", ge=1)
    tie_word_embeddings: bool = _f(True, "share input and output embeddings")
    attention_dropout: float = _f(0.0, "dropout on attention weights (a regulariser for a model trained from scratch)", ge=0, lt=1)

    def __post_init__(self) -> None:
        super().__post_init__()  # ranges first: num_kv_heads = 0 is a range error, not a ZeroDivisionError
        if self.hidden_size % self.num_heads:
            raise ConfigError("backbone.tiny.hidden_size must be divisible by num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("backbone.tiny.num_heads must be divisible by num_kv_heads")


@dataclass
class BackboneConfig(_Section):
    name: str = _f("tiny", "'tiny' (built from `tiny` + a BPE trained on the corpus), a HF model id, or a local path")
    tiny: TinyBackboneConfig = field(default_factory=TinyBackboneConfig, metadata={"help": "the embedded tiny model"})
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "weights dtype while training (keep float32 with AdamW unless DeepSpeed keeps fp32 master weights: distributed.bf16)")
    inference_dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f("float32", "weights dtype of a trained checkpoint when it encodes, is evaluated or serves (bfloat16: about twice as fast on CPUs with AVX512-BF16, vectors within bf16 rounding; several times slower where bfloat16 is emulated, e.g. AVX2-only CPUs); auto: bfloat16 where the device computes it natively, else float32 (onegen_core/method/precision.py)")
    token_init: Literal["description", "pieces"] = _f("pieces", "the new OneGen tokens' embedding rows start at the mean of the rows of their literal text's pieces ([, RQ, ]) or of their description's tokens ([RQ]: 'information of question', as the authors' code does)")
    chat_template: Literal["auto", "none"] = _f("auto", "auto: wrap the prompt of every example (training and inference alike) in the tokenizer's chat template when it has one (instruct backbones); none: plain text")
    attn_implementation: str = _f("sdpa", "transformers attention implementation (sdpa, eager, flash_attention_2)")

    def is_tiny(self) -> bool:
        return self.name == "tiny"


@dataclass
class TokenizerConfig(_Section):
    vocab_size: int = _f(8000, "BPE vocabulary size of the tokenizer trained for the tiny backbone (its byte alphabet and EOS/PAD need 258)", ge=258)
    min_frequency: int = _f(2, "minimum pair frequency for a BPE merge", ge=1)
    corpus: list[str] = _f([], "extra text files (JSON passages {title, text}) the BPE is trained on, besides the training questions")


@dataclass
class ReconstructConfig(_Section):
    query_style: Literal["implicit", "explicit"] = _f("implicit", "multi-hop: [RQ] right after the context ('The question is:'), or after a written sub-question")
    use_loc: bool = _f(False, "wrap an explicit sub-question in <LOC>…</LOC>")
    granularity: Literal["sentence", "document"] = _f("sentence", "one [RD] per sentence or per paragraph")
    max_negative_paragraphs: int = _f(8, "multi-hop: distractor paragraphs kept per question (their units are negatives)", ge=0)
    pasted_negatives: bool = _f(True, "multi-hop: the paragraphs pasted before an [RQ] (earlier hops' gold) are negatives of it; false = neither positive nor negative, since inference never retrieves a pasted passage again")


@dataclass
class LossConfig(_Section):
    kind: Literal["bpr", "info_nce"] = _f("bpr", "retrieval loss")
    lambda_g: float = _f(1.0, "weight of the next-token loss", ge=0)
    lambda_r: float = _f(1.0, "weight of the retrieval loss", ge=0)
    temperature: float = _f(0.05, "InfoNCE temperature", gt=0)
    in_batch: bool = _f(False, "InfoNCE: other queries' positives as extra negatives")
    positives_per_query: int = _f(2, "positives sampled per [RQ]", ge=1)
    negatives_per_positive: int = _f(8, "negatives sampled per positive (0 = every candidate in the batch)", ge=0)
    share_negatives: bool = _f(True, "units of the other examples in the batch are negatives too")
    own_negatives_first: bool = _f(False, "draw each positive's negatives from its own example's labelled negatives first (a question's distractor paragraphs, a mention's candidates), the batch's shared units only after them; false = uniform over both")

    def __post_init__(self) -> None:
        super().__post_init__()  # lambda_g, lambda_r >= 0 and temperature > 0, all finite


@dataclass
class TrainConfig(_Section):
    seed: int = _f(0, "seed of data order, pair sampling and initialisation", ge=0)
    lr: float = _f(1e-3, "peak learning rate", gt=0)
    min_lr_ratio: float = _f(0.1, "cosine decay floor as a fraction of lr", ge=0, le=1)
    warmup_ratio: float = _f(0.05, "fraction of steps of linear warm-up", ge=0, le=1)
    weight_decay: float = _f(0.01, "AdamW weight decay", ge=0)
    grad_clip: float = _f(1.0, "max global gradient norm (0 = off)", ge=0)
    epochs: int = _f(10, "passes over the training set", ge=1)
    max_steps: int = _f(0, "stop after this many optimizer steps (0 = no cap)", ge=0)
    batch_size: int = _f(4, "examples per micro-batch (per device)", ge=1)
    grad_accum: int = _f(1, "micro-batches per optimizer step", ge=1)
    max_length: int = _f(1024, "main sequences are truncated to this many tokens (counted)", ge=2)
    max_doc_length: int = _f(256, "document sequences are truncated to this many tokens (counted)", ge=2)
    schedule: Literal["cosine", "linear"] = _f("cosine", "decay after warm-up, down to lr * min_lr_ratio (linear to 0 = HF Trainer's default, which the paper's runs used)")
    log_every: int = _f(10, "log every N optimizer steps", ge=1)
    output_dir: str = _f("models/core", "where the trained checkpoint is written")
    trainable_layers: int = _f(0, "train only the top N decoder layers and the final norm; the embeddings and lower layers stay frozen and their output is computed once per sequence and cached (a CPU recipe, valid on GPUs too); 0 = every layer", ge=0)
    autocast: Literal["auto", "none", "bfloat16"] = _f("none", "compute dtype of the forward pass under torch.autocast (weights and optimizer state stay in backbone.dtype); auto: bfloat16 where the device computes it natively, else none (onegen_core/method/precision.py)")
    length_bucketing: bool = _f(False, "order each epoch so that a global batch holds examples of similar length (less padding); the order stays a function of (seed, epoch)")
    compile: bool = _f(False, "run the trainable decoder layers through torch.compile (TorchInductor; needs a C++ compiler on CPUs): fused element-wise kernels, ~20% faster steps on the CPU default after a ~40 s compilation (onegen_core/training/compiled.py); not with ZeRO-3, whose parameter hooks it does not trace")

    def steps_per_epoch(self, n_examples: int) -> int:
        micro = -(-n_examples // self.batch_size)
        return max(1, micro // self.grad_accum)

    def total_steps(self, n_examples: int) -> int:
        total = self.steps_per_epoch(n_examples) * self.epochs
        return min(total, self.max_steps) if self.max_steps else total


def _check_task_counts(key: str, counts: dict[str, int]) -> None:
    for task, n in counts.items():
        if task not in TASKS:
            raise ConfigError(f"{key}: unknown task {task!r} (known: {', '.join(TASKS)})")
        if n < 0:
            raise ConfigError(f"{key}.{task} must be >= 0 (got {n!r})")


@dataclass
class TrainDataConfig(_Section):
    """Data and validation of the distributed `train` stage."""

    train_file: str = _f("data/label/train.jsonl", "training JSONL from the label stage (the documented format)")
    val_file: str = _f("data/label/val.jsonl", "validation JSONL from the label stage: retrieval accuracy during training")
    tasks: list[str] = _f(["multihop"], "which tasks of the files to train on (multihop, entity_linking, selfrag)")
    max_examples_per_task: int = _f(0, "train on at most this many examples of each task (0 = all); a fixed hash-chosen subset", ge=0)
    max_examples_by_task: dict[str, int] = _f({}, "per-task caps that replace max_examples_per_task for the tasks they name, e.g. {multihop: 0, entity_linking: 120} (0 = all of that task)")
    eval_every: int = _f(25, "validate every N optimizer steps (and after the last)", ge=1)
    val_max_examples: int = _f(64, "validate on at most this many examples (0 = all)", ge=0)
    val_max_examples_by_task: dict[str, int] = _f({}, "per-task caps on the validation examples, a fixed hash-chosen subset (0 = all of that task); applied before val_max_examples")
    init_dir: str = _f("models/init", "the initial backbone (tiny: trained tokenizer + seeded weights), built once so every worker and every resume start from it")
    metrics_path: str = _f("metrics/train.json", "figures of the run (DVC metrics)")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ConfigError(f"train_data.tasks must name one or more of {list(TASKS)} (got {self.tasks!r})")
        for task, cap in self.max_examples_by_task.items():
            if task not in TASKS:
                raise ConfigError(f"train_data.max_examples_by_task: unknown task {task!r} (known: {', '.join(TASKS)})")
            if cap < 0:
                raise ConfigError(f"train_data.max_examples_by_task.{task} must be >= 0 (got {cap!r})")
        _check_task_counts("train_data.val_max_examples_by_task", self.val_max_examples_by_task)

    def caps(self) -> dict[str, int]:
        """The cap of each trained task (0 = all of it): `max_examples_by_task` where it names the task,
        else `max_examples_per_task`."""
        return {t: self.max_examples_by_task.get(t, self.max_examples_per_task) for t in self.tasks}


@dataclass
class DistributedConfig(_Section):
    """Ray Train + DeepSpeed: the same code on a laptop (CPU, gloo) and a GPU cluster (NCCL)."""

    num_workers: int = _f(2, "Ray Train workers (data-parallel ranks)", ge=1)
    use_gpu: bool = _f(False, "GPU workers over NCCL; false = CPU workers over gloo")
    gpus_per_worker: float = _f(1.0, "GPUs Ray reserves per worker (use_gpu)", ge=0)
    cpus_per_worker: float = _f(1.0, "CPUs Ray reserves per worker", gt=0)
    threads_per_worker: int = _f(1, "torch intra-op threads per worker (CPU)", ge=1)
    deepspeed_config: str = _f("infra/deepspeed/zero3.json", "DeepSpeed config; 'auto' values are filled from train/distributed")
    bf16: bool = _f(False, "bf16 mixed precision (GPU profiles); fp32 on CPU")
    ray_address: str = _f("", "Ray cluster to join ('' = start a local Ray; 'auto'; 'ray://head:10001'; "
                          "'127.0.0.2:26379' for infra/ray/local-cluster.sh); encode/evaluate with executor: ray join it too")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = _f(
        "PACK", "where Ray places the workers: PACK (fill a node first: NVLink between GPU ranks), SPREAD (one per node when it can)")
    storage_path: str = _f("runs/ray", "where Ray Train keeps checkpoints (local dir, s3://…, or a shared filesystem on a cluster)")
    checkpoint_every: int = _f(50, "report a checkpoint every N optimizer steps (and after the last)", ge=1)
    keep_checkpoints: int = _f(2, "checkpoints kept per run (older ones are deleted)", ge=1)
    max_failures: int = _f(1, "worker-group restarts from the latest checkpoint after a crash", ge=0)
    resume_from: str = _f("auto", "'auto': continue this run's latest checkpoint if its settings match; 'never'; or a checkpoint directory")
    trust_resume: bool = _f(False, "allow a resume_from directory outside storage_path: DeepSpeed unpickles the optimizer state it finds there (torch.load, weights_only=False), so only for checkpoints you trust; logged")
    fail_at_step: int = _f(0, "testing: kill rank 1 after reporting this step, once (0 = off)", ge=0)


@dataclass
class LoraSettings(_Section):
    enabled: bool = _f(False, "LoRA adapters (peft) instead of full fine-tuning")
    r: int = _f(16, "adapter rank", ge=1)
    alpha: int = _f(32, "adapter scaling numerator", ge=1)
    dropout: float = _f(0.05, "dropout on the adapter input", ge=0, lt=1)
    target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "linear layers that get adapters")


@dataclass
class MlflowConfig(_Section):
    tracking_uri: str = _f("sqlite:///mlruns.db", "MLflow tracking store (relative sqlite paths resolve against the project root)")
    artifact_location: str = _f("mlartifacts", "artifact root of experiments this project creates: a path (resolved against the project), a URI (s3://…, mlflow-artifacts:/…), or '' = the tracking server's default")
    experiment: str = _f("onegen", "experiment name")
    registered_model: str = _f("onegen", "the final checkpoint is registered as a version of this model ('' = don't)")
    log_checkpoint: bool = _f(True, "log the final Hugging Face checkpoint as run artifacts")


@dataclass
class PrepareConfig(_Section):
    hotpotqa_train: list[str] = _f([], "HotpotQA files whose questions are all training questions")
    hotpotqa_dev: str = _f("", "HotpotQA dev file: the first `dev_train_count` questions train, the rest are held out")
    dev_train_count: int = _f(100, "dev questions moved to training (the rest are held out for evaluation)", ge=0)
    wiki2_eval: list[str] = _f([], "2WikiMultihopQA files held out for evaluation")
    elevant: list[str] = _f([], "ELEVANT benchmark JSONL files (entity linking)")
    el_eval_benchmarks: list[str] = _f([], "ELEVANT benchmarks (file stems) kept for evaluation; the others train. Articles never cross the split")
    kb: str = _f("", "entity KB JSONL {id, title, description}; empty = build the embedded KB from the benchmark labels")
    kb_passages: list[str] = _f([], "passage corpora ({title, text}) whose passage of an entity's title becomes its description")
    kb_context_passages: list[str] = _f([], "HotpotQA-format files whose context paragraphs serve as passages too")
    allow_empty_outputs: bool = _f(False, "let settings that give an output no input (wiki2_eval: [], elevant: [], dev_train_count past the dev set, no validation split) replace a non-empty output of prepare or label with an empty one; off: an error naming the setting, the old file kept")
    kb_pages: bool = _f(True, "also write kb_pages.jsonl: every titled page of kb_passages, kb_context_passages and wiki2_eval that is no entity's title, as an entry 'page:<title>' that evaluation searches (encode.kb_pages) and training never samples")
    on_error: Literal["raise", "skip"] = _f("skip", "malformed records: fail at once, or skip them (counted, listed in the report)")
    max_skip_rate: float = _f(0.02, "fail the stage when more than this fraction of a file's records is skipped", ge=0, le=1)
    out_dir: str = _f("data/prepared", "where normalised records, the KB and the report are written")


@dataclass
class AnnotateConfig(_Section):
    backend: Literal["heuristic", "openai", "hf"] = _f("heuristic", "decomposition annotator: supporting-facts heuristic (no LLM), an OpenAI-compatible endpoint, or a local HF model")
    base_url: str = _f("http://127.0.0.1:8000/v1", "OpenAI-compatible endpoint (vLLM serving Qwen2-72B-Instruct)")
    model: str = _f("Qwen/Qwen2-72B-Instruct", "model name sent to the endpoint")
    api_key_env: str = _f("OPENAI_API_KEY", "environment variable holding the API key (the key itself never goes in params)")
    timeout_s: float = _f(120.0, "per-request timeout", gt=0)
    max_retries: int = _f(4, "retries on timeouts, connection errors, 429 and 5xx", ge=0)
    backoff_s: float = _f(1.0, "first retry delay (doubles each retry)", ge=0)
    max_backoff_s: float = _f(60.0, "longest retry delay", ge=0)
    temperature: float = _f(0.0, "sampling temperature of the annotator", ge=0)
    max_tokens: int = _f(1024, "longest answer", ge=1)
    max_concurrency: int = _f(8, "requests in flight at once", ge=1)
    max_attempts: int = _f(3, "answers requested per example before it is recorded as rejected", ge=1)
    structured_output: bool = _f(False, "ask the server to constrain each answer to the Fig. 13 answer format (vLLM structured outputs, a regex per record): for small annotators that do not keep the format; the paper's Qwen2-72B needed none (off)")
    prompt: Literal["fig13", "numbered"] = _f("fig13", "decomposition prompt: the paper's Fig. 13 verbatim, or 'numbered' (this project's earlier prompt: documents as [k] Title: text, an example of ours)")
    hf_model_path: str = _f("", "local HF model directory (backend: hf)")
    executor: Literal["local", "ray"] = _f("local", "where requests run: in-process threads, or Ray tasks (a cluster fan-out)")
    ray_address: str = _f("", "Ray cluster to join for executor 'ray' ('' = local Ray, 'auto', or 'ray://host:10001')")
    on_reject: Literal["heuristic", "drop"] = _f("heuristic", "examples whose answers were rejected: fall back to the heuristic decomposition, or drop them (counted)")
    out_dir: str = _f("data/annotate", "cache (append-only, kept across runs), decompositions and report")


@dataclass
class LabelConfig(_Section):
    positives_per_sentence: int = _f(1, "multi-hop: supporting sentences kept as positives per hop (Table 10), 0 = all", ge=0)
    negatives_per_positive: int = _f(0, "multi-hop: explicit negatives kept per positive (0 = every other unit)", ge=0)
    el_hard_negatives: int = _f(4, "entity linking: same-name candidate entities per mention", ge=0)
    el_random_negatives: int = _f(4, "entity linking: random entities per mention", ge=0)
    el_max_chars: int = _f(1500, "entity linking: articles are cut into windows of at most this many characters", ge=1)
    selfrag: list[str] = _f([], "Self-RAG training files (selfrag_train_data format: instruction, input, output with reflection tokens); the label stage emits their records as task 'selfrag'")
    selfrag_negative_window: list[float] = _f([0.9975, 1.0], "Self-RAG hard negatives of a passage: the passages of those files that MiniLM ranks in this window, as fractions of the ranked corpus (App. F: ranks 5985-6000 of ~6000)", ge=0, le=1)
    selfrag_max_negatives: int = _f(16, "Self-RAG: at most this many hard negatives per passage", ge=0)
    val_fraction: float = _f(0.1, "training examples held apart to validate during training (of each task not named in val_count_by_task, when that is set)", ge=0, lt=1)
    val_count_by_task: dict[str, int] = _f({}, "validation examples of each task named, at most half of the task (the other tasks hold apart val_fraction of their own examples); {} = val_fraction of all examples together")
    seed: int = _f(0, "seed of negative sampling and the validation split", ge=0)
    out_dir: str = _f("data/label", "training JSONL (the documented format) and report")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_task_counts("label.val_count_by_task", self.val_count_by_task)
        w = self.selfrag_negative_window
        if len(w) != 2 or not w[0] < w[1]:
            raise ConfigError(f"label.selfrag_negative_window must be [lo, hi] with 0 <= lo < hi <= 1 (got {w!r})")


@dataclass
class EncodeConfig(_Section):
    checkpoint: str = _f("models/core", "trained checkpoint whose [RD] vectors fill the index")
    uri: str = _f("data/index", "LanceDB URI: a local directory, or s3://bucket/path, gs://bucket/path")
    table: str = _f("units", "table name")
    granularity: Literal["sentence", "document"] = _f("sentence", "one [RD] per sentence or per document (as trained)")
    hotpotqa: list[str] = _f([], "HotpotQA/2Wiki-format files whose context paragraphs are encoded")
    wiki2: list[str] = _f([], "2WikiMultihopQA files whose context paragraphs are encoded")
    passages: list[str] = _f([], "passage corpora ({title, text} JSON/JSONL) encoded too (open setting)")
    batch_size: int = _f(32, "documents per forward pass", ge=1)
    max_doc_length: int = _f(320, "documents are truncated to this many tokens (cut units are counted)", ge=2)
    ann_min_rows: int = _f(50000, "build an ANN index (ann_index_type) at or above this many units; exact in-memory search below", ge=1)
    # the ANN index's type and settings by table size (tasks/adapters/lance_index.py `plan_ann_index`);
    # chosen from LanceDB's guidance and bench/index_scale.py (metrics/index_scale.json)
    ann_index_type: Literal["ivf_pq", "ivf_rq", "ivf_hnsw_sq"] = _f("ivf_rq", "LanceDB index: ivf_rq (RaBitQ, 1 bit a dimension; at 1M x 576 recall@10 .982 at 9.2 ms p50 with 256 partitions, nprobes 20, refine 10, built in 40 s), ivf_pq (product quantization: .959 at 11.4 ms, built in 125 s), ivf_hnsw_sq (an HNSW graph per partition over 8-bit scalars: .975 at 6.9 ms, but built in 701 s and 20x the disk)")
    ann_rows_per_partition: int = _f(4096, "IVF partitions = units / this, at least 1 (LanceDB's guidance: 4-8k rows a partition; 244 partitions at 1M units)", ge=1)
    ann_pq_sub_vector_dims: int = _f(16, "ivf_pq: dimensions per PQ sub-vector, so dim / this sub-vectors (LanceDB's default dim/16: 36 at 576); the largest divisor of dim not above it when it does not divide dim", ge=1)
    ann_nprobes: int = _f(20, "IVF partitions searched per query (stored with the index; every search of the table uses it)", ge=1)
    ann_refine_factor: int = _f(10, "re-rank k x this candidates by their exact cosine (stored with the index; 0 = rank by the compressed codes alone)", ge=0)
    ann_hnsw_ef: int = _f(0, "ivf_hnsw_sq: candidates the graph search keeps (stored with the index; 0 = LanceDB's 1.5 x k; raised to k x refine factor when re-ranking)", ge=0)
    report_path: str = _f("metrics/encode.json", "counts of what was encoded")
    kb: str = _f("", "entity KB JSONL (id, title, description) encoded as `{title}: {description} [RD]`; '' = none")
    kb_table: str = _f("entities", "table of the entity KB's vectors (entity linking retrieves from it)")
    kb_pages: str = _f("", "KB JSONL of extra entries (prepare's kb_pages.jsonl: titled pages no benchmark names) added to kb_table, so disambiguation meets entities beyond the benchmarks' own; '' = none")
    kb_pages_descriptions: bool = _f(False, "encode a kb_pages entry with its passage as description; false (default): its title alone, the form the trained KB entries have (the embedded KB is built from benchmark labels: 2,873 of its 2,893 entries have no description), so a page and an entity are scored alike, and the 8,621 pages encode in minutes rather than an hour on a CPU")
    executor: Literal["local", "ray"] = _f("local", "local: one process; ray: Ray Data actors (ray_data.*) on the "
                                           "cluster of distributed.ray_address, rows appended to the same tables")


@dataclass
class EvaluateConfig(_Section):
    checkpoint: str = _f("models/core", "the trained checkpoint to evaluate (its index comes from `encode`)")
    index_uri: str = _f("data/index", "LanceDB URI the encode stage filled")
    units_table: str = _f("units", "passage table (multi-hop retrieval)")
    kb_table: str = _f("entities", "entity table (entity linking retrieval)")
    hotpotqa: str = _f("data/prepared/hotpotqa_heldout.jsonl", "held-out HotpotQA questions ('' = skip)")
    wiki2: str = _f("data/prepared/2wiki_heldout.jsonl", "held-out 2WikiMultihopQA questions ('' = skip)")
    elevant: list[str] = _f([], "ELEVANT benchmark files to link (their articles must not be trained on)")
    el_benchmarks: list[str] = _f([], "restrict `elevant` to these benchmark names ([] = all listed files)")
    settings: list[str] = _f(["distractor", "open"], "multi-hop retrieval over each question's own paragraphs and/or the whole index")
    max_questions: int = _f(0, "evaluate at most this many questions per dataset (0 = all)", ge=0)
    max_articles: int = _f(0, "link at most this many articles per benchmark (0 = all)", ge=0)
    max_retrievals: int = _f(4, "multi-hop: a question emitting more [RQ] than this is a miss (retrieval_cap)", ge=1)
    max_new_tokens: int = _f(160, "multi-hop: tokens the model may sample per question", ge=1)
    el_max_chars: int = _f(1500, "entity linking: article windows of at most this many characters (as trained)", ge=1)
    el_max_retrievals: int = _f(64, "entity linking: [RQ] cap per window", ge=1)
    baselines: list[str] = _f(["minilm", "bm25"], "retrievers run with the same generator: minilm (pipeline), bm25")
    baseline_unit_text: Literal["rd_context", "unit"] = _f("rd_context", "what the baselines score for a unit: rd_context = what OneGen's [RD] read (the title and the paragraph up to the end of the sentence), unit = 'Title: sentence' alone (before 2026-12-07)")
    sft_checkpoint: str = _f("", "an SFT-only (lambda_r = 0) checkpoint evaluated as generator with MiniLM retrieval; '' = none")
    batch_size: int = _f(8, "multi-hop: rows generated together", ge=1)
    el_batch_size: int = _f(8, "entity linking: windows generated together (they copy their text, so rows of one batch, sorted by length, run about as long)", ge=1)
    el_draft_tokens: int = _f(0, "entity linking: tokens of the window's text guessed per pass and kept where the greedy choice agrees (the same output in float32, fewer passes; in bfloat16 the wider pass rounds differently and close decisions can move; 0 = one token a pass)", ge=0, le=64)
    out_dir: str = _f("reports/evaluate", "report.md, plots and per-example predictions (JSONL, ELEVANT JSONL)")
    metrics_path: str = _f("metrics/evaluate.json", "DVC metrics")
    log_mlflow: bool = _f(True, "log metrics and the report to the MLflow run that trained the checkpoint")
    executor: Literal["local", "ray"] = _f("local", "local: one process; ray: OneGen's generation batches through "
                                           "Ray Data actors (ray_data.*), each holding the model and the index")

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = set(self.settings) - {"distractor", "open"}
        if bad:
            raise ConfigError(f"evaluate.settings: unknown {sorted(bad)} (use distractor, open)")
        bad = set(self.baselines) - {"minilm", "bm25"}
        if bad:
            raise ConfigError(f"evaluate.baselines: unknown {sorted(bad)} (use minilm, bm25)")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class RayDataConfig(_Section):
    """Ray Data actor pools of model replicas (`encode.executor: ray`, `evaluate.executor: ray`)."""

    actors_min: int = _f(1, "actors (model replicas) the pool starts with", ge=1)
    actors_max: int = _f(2, "actors the pool may grow to (one per GPU on a GPU cluster)", ge=1)
    cpus_per_actor: float = _f(1.0, "CPUs Ray reserves per actor (its torch threads)", gt=0)
    gpus_per_actor: float = _f(1.0, "GPUs per actor when the cluster has GPUs (none are asked for on a CPU cluster)", ge=0)
    # whole-CPU read/write tasks beside one 1-CPU actor per node starve each other: Ray Data then waits
    # for resources with no error. A fraction lets them share the actors' nodes.
    task_cpus: float = _f(0.25, "CPUs per Ray Data read/write task", gt=0, le=1)
    commit_every: int = _f(2000, "encode: documents per Lance commit (an interrupted run loses at most one)", ge=1)
    actors_start_timeout_s: float = _f(600.0, "a pool whose actors_min replicas are not all up (model loaded) by then "
                                       "fails, naming resources, rather than waiting silently", gt=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.actors_max < self.actors_min:
            raise ConfigError(f"ray_data.actors_max ({self.actors_max}) < ray_data.actors_min ({self.actors_min})")


@dataclass
class ServeConfig:
    """`onegen ask`, `onegen link` and `onegen api`: the checkpoint of `evaluate.checkpoint` with the index of
    `encode.uri` (tables `encode.table`, `encode.kb_table`); the defaults of a request are the settings the
    checkpoint was evaluated with (`evaluate.max_new_tokens`, `max_retrievals`, `el_max_chars`, …)."""

    host: str = _f("127.0.0.1", "address `onegen api` binds; anything but loopback without an API key prints a warning")
    port: int = _f(8080, "port `onegen api` listens on (0 = any free port)")
    max_batch_size: int = _f(8, "rows (questions, or link windows) generated together in one batch")
    max_wait_ms: float = _f(10.0, "how long the first request of a batch waits for others to join it (dynamic batching)")
    max_queue: int = _f(64, "requests waiting for a batch; one more is answered 429")
    request_timeout_s: float = _f(120.0, "a request still queued or generating after this long is stopped and answered 504")
    max_text_chars: int = _f(4000, "longest question or text to link (characters); longer is a 400")
    max_new_tokens: int = _f(512, "most tokens a request may ask the model to sample (`max_tokens`); more is a 400")
    top_k: int = _f(3, "retrieved units shown per [RQ] (the top one is pasted) and candidates per linked mention")
    max_top_k: int = _f(20, "largest `top_k` a request may ask for")
    api_key_env: str = _f("ONEGEN_API_KEY", "environment variable holding the bearer token `onegen api` requires when it is set and non-empty (the token itself never goes in params or logs)")
    link_nil: Literal["auto", "off", "fixed"] = _f("auto", "entity linking abstains (NIL) when the best candidate scores below a threshold: auto = the one the link_threshold stage chose on validation for the served checkpoint (link_threshold_path; none when it was chosen for another checkpoint or not at all, said in the log and /v1/info), fixed = link_min_score, off = always link the nearest entity")
    link_min_score: float = _f(0.0, "the threshold of link_nil: fixed (cosine, in [-1, 1])", ge=-1.0, le=1.0)
    link_threshold_path: str = _f("metrics/link_threshold.json", "where the link_threshold stage writes the NIL threshold it chose on validation")
    threads: int = _f(0, "torch intra-op threads of ask/link/api (0 = torch's default, one per core; on a machine shared with another job, fewer threads than cores avoid spinning workers that slow every step)")

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"serve.threads must be >= 0 (0 = torch's default), got {self.threads}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port: {self.port} is not a port (0-65535)")
        for name in ("max_batch_size", "max_queue", "max_text_chars", "max_new_tokens", "top_k", "max_top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"serve.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"serve.request_timeout_s must be > 0, got {self.request_timeout_s}")
        if not -1.0 <= self.link_min_score <= 1.0:
            raise ConfigError(f"serve.link_min_score: {self.link_min_score} is not a cosine (in [-1, 1])")
        if self.top_k > self.max_top_k:
            raise ConfigError(f"serve.top_k ({self.top_k}) must be <= serve.max_top_k ({self.max_top_k})")
        if self.api_key_env and not _ENV_NAME.match(self.api_key_env):
            raise ConfigError(f"serve.api_key_env: {self.api_key_env!r} is not an environment variable name")
        if not self.host.strip():
            raise ConfigError("serve.host must not be empty (127.0.0.1 = this machine only)")


@dataclass
class Params:
    profile: str = _f("", "named settings in profiles/<name>.yaml laid over this file (e.g. paper-multihop-qwen2-1.5b)")
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    train_data: TrainDataConfig = field(default_factory=TrainDataConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    ray_data: RayDataConfig = field(default_factory=RayDataConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        if self.lora.enabled and self.train.trainable_layers:
            raise ConfigError("lora.enabled and train.trainable_layers are two recipes; choose one "
                              "(set train.trainable_layers: 0 for LoRA)")
        if "selfrag" in self.train_data.tasks and not self.label.selfrag:
            raise ConfigError("train_data.tasks includes 'selfrag' but label.selfrag names no Self-RAG training "
                              "file: the label stage emits Self-RAG examples only from those files")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = typing.get_args(tp)
        return {_convert(k, kt, f"{key} (a key)"): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        value = yaml11_float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types name the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown key '{where}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], f"{prefix}.{f.name}" if prefix else f.name)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}: {e}" if prefix and not str(e).startswith(prefix) else str(e)) from e


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml into `Params`; `overrides` maps dotted keys ('train.lr') to values.

    Layers, last wins: params.yaml, then the profile it (or an override) names, read from
    `profiles/<name>.yaml` beside it, then the overrides.
    """
    path = Path(path)
    data = _read_mapping(path)  # a missing or empty file is an error: built-in defaults are not a params file
    profile = (overrides or {}).get("profile", data.get("profile", ""))
    where = str(path)
    if profile:
        ppath = path.parent / "profiles" / f"{profile}.yaml"
        if not ppath.is_file():
            known = sorted(p.stem for p in (path.parent / "profiles").glob("*.yaml"))
            raise ConfigError(f"profile '{profile}': no file {ppath} (known: {', '.join(known) or 'none'})")
        where = f"{path} + {ppath}"
        overlay = _read_mapping(ppath)  # its errors name the profile file already
        try:
            deep_merge(data, overlay)
        except ConfigError as e:
            raise ConfigError(f"{ppath}: {e}") from None
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    try:
        return from_dict(Params, data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last
    silently, so a second `lr:` further down would win unseen)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} given twice "
                                  f"(first at line {seen[key]})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _read_mapping(path: Path) -> dict[str, Any]:
    """A params or profile file as a mapping; every problem names the file (and the line, for YAML)."""
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (pass --params with an existing file)")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}: invalid YAML: {where}{problem}") from None
    if data is None:
        raise ConfigError(f"{path}: params file is empty (a run on built-in defaults is never what was meant)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any], prefix: str = "") -> None:
    """Lay `over` onto `base` in place: mappings merge key by key, anything else replaces."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v, f"{prefix}{k}.")
        elif isinstance(v, dict) and k in base and not isinstance(base[k], dict):
            raise ConfigError(f"'{prefix}{k}' is a value, not a section")
        else:
            base[k] = v


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key → value, e.g. for logging every resolved param to a tracker."""
    out: dict[str, Any] = {}
    for k, v in (dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj).items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
