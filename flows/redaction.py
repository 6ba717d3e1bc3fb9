"""Secret values kept out of everything a flow records: stage logs, params.yaml, flow parameters, MLflow.

The stages read their secrets from the environment themselves; a flow only needs to know the values to
mask them in what it prints and to refuse them where they would be written down.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from flows.project import FlowError

# environment variables whose values never reach a log, a params file or MLflow (plus the one named by
# params `annotate.api_key_env`)
SECRET_ENV_NAMES = ("OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PREFECT_API_KEY", "HF_TOKEN",
                    "HUGGING_FACE_HUB_TOKEN", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD")
REDACTED = "***"


def secret_values(root: Path | None = None) -> list[str]:
    """Values of the secret environment variables set here (the annotator key named by params and the
    usual cloud credentials), longest first so a secret containing another is masked whole. Short values
    are ignored: redacting 'a' would shred every log line."""
    names = list(SECRET_ENV_NAMES)
    if root is not None:
        try:
            raw = yaml.safe_load((root / "params.yaml").read_text()) or {}
            env_name = (raw.get("annotate") or {}).get("api_key_env")
            if env_name:
                names.append(str(env_name))
        except (OSError, yaml.YAMLError):
            pass
    vals = {os.environ.get(n, "") for n in names}
    return sorted((v for v in vals if len(v) >= 6), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every value of `secrets` replaced by REDACTED."""
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def refuse_secrets(values: Any, secrets: list[str], what: str) -> None:
    """Fail if a secret's value was passed where it would be recorded (flow parameters, params.yaml)."""
    blob = json.dumps(values, default=str)
    if any(s in blob for s in secrets):
        raise FlowError(f"{what} contain the value of a secret environment variable; secrets are read from the "
                        f"environment by the stage that needs them and must not be passed as parameters")
