"""flows/redaction.py: which values are secret, how they are masked, where they are refused."""
from __future__ import annotations

import pytest


def test_secret_values_include_the_key_params_name_and_skip_short_ones(tmp_path, monkeypatch):
    from flows.redaction import SECRET_ENV_NAMES, secret_values

    for name in SECRET_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "params.yaml").write_text("annotate:\n  api_key_env: MY_LLM_KEY\n")
    monkeypatch.setenv("MY_LLM_KEY", "llm-key-123")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-longer-key-4567")
    monkeypatch.setenv("HF_TOKEN", "short")  # under 6 characters: not masked
    assert secret_values(tmp_path) == ["sk-longer-key-4567", "llm-key-123"]  # longest first
    assert secret_values() == ["sk-longer-key-4567"]
    (tmp_path / "params.yaml").write_text("annotate: [unclosed\n")  # unreadable params: the usual names only
    assert secret_values(tmp_path) == ["sk-longer-key-4567"]


def test_redact_masks_each_value_and_refuse_secrets_refuses_them():
    from flows.project import FlowError
    from flows.redaction import redact, refuse_secrets

    assert redact("a sk-123456 b sk-123456", ["sk-123456"]) == "a *** b ***"
    assert redact("nothing here", ["sk-123456"]) == "nothing here"
    refuse_secrets({"train.steps": 2}, ["sk-123456"], "overrides")
    with pytest.raises(FlowError, match="overrides contain the value of a secret"):
        refuse_secrets({"annotate.note": "sk-123456"}, ["sk-123456"], "overrides")
