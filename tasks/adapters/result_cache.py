"""The evaluate stage's finished pieces on disk, so an interrupted evaluation resumes where it stopped.

Each (dataset, setting, system) result and each entity-linking pass is one JSON file under
`runs/evaluate/<checkpoint id>-<digest>/`, where the digest covers the checkpoint, the inference dtype,
the query style and every evaluate setting that changes a number (not where the outputs go). Changing
how the key is built orphans every cache already computed: `tests/adapters/test_result_cache.py` pins it.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from onegen_core.config import EvaluateConfig, flatten
from onegen_core.data.atomic_write import write_text_atomic
from onegen_core.evaluation.linking import PredictedMention
from onegen_core.method.backbone import check_path_id

# settings that say where results go, or where they are computed (local or Ray: the same results), not
# what they are: they stay out of the key
_NOT_IN_KEY = ("out_dir", "metrics_path", "log_mlflow", "executor")


def cache_key(checkpoint_id: str, dtype: str, query_style: str, cfg: EvaluateConfig) -> dict[str, Any]:
    """What a cached piece depends on: the weights, the dtype they ran in, what the model writes before
    [RQ] (hence what a baseline retriever reads), and the evaluate settings."""
    return {"checkpoint_id": checkpoint_id, "dtype": dtype, "query_style": query_style,
            **{k: v for k, v in flatten(cfg).items() if k not in _NOT_IN_KEY}}


class ResultCache:
    """Finished pieces of one evaluation, keyed by checkpoint and settings: re-running skips them."""

    def __init__(self, root: Path, key: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        # the id becomes a directory name: `../x` would write outside `root`
        self.dir = root / f"{check_path_id(key['checkpoint_id'], 'checkpoint_id')}-{digest}"
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, name: str) -> Any | None:
        f = self.dir / f"{name}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def put(self, name: str, value: Any) -> Any:
        write_text_atomic(self.dir / f"{name}.json", json.dumps(value, indent=2, default=str) + "\n")
        return value

    def get_or_put(self, name: str, compute: Callable[[], Any]) -> Any:
        """The kept piece `name`, or `compute()`'s value, kept before it is returned."""
        value = self.get(name)
        return self.put(name, compute()) if value is None else value


def mentions_to_json(preds: Mapping[str, Sequence[PredictedMention]]) -> dict[str, list[dict]]:
    """Predicted mentions by article key, as a cached piece holds them."""
    return {k: [m.__dict__ for m in v] for k, v in preds.items()}


def mentions_from_json(data: Mapping[str, Sequence[dict]]) -> dict[str, list[PredictedMention]]:
    return {k: [PredictedMention(**m) for m in v] for k, v in data.items()}
