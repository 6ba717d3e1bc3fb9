"""`auto` precision settings: bfloat16 only where the device computes it natively."""
from __future__ import annotations

import pytest
import torch

from onegen_core.method import precision
from onegen_core.training.loop import compute_precision


@pytest.mark.parametrize("native", [True, False])
def test_auto_takes_bfloat16_only_where_it_is_native(monkeypatch, native):
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device_type="cpu": native)
    assert precision.resolve_autocast("auto") == ("bfloat16" if native else "none")
    assert precision.resolve_inference_dtype("auto") == ("bfloat16" if native else "float32")
    assert precision.autocast_dtype("auto") == (torch.bfloat16 if native else torch.float32)
    with compute_precision("auto"):
        assert torch.is_autocast_enabled("cpu") is native


def test_explicit_settings_are_kept_whatever_the_machine(monkeypatch):
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device_type="cpu": False)
    assert precision.resolve_autocast("bfloat16") == "bfloat16"
    assert precision.resolve_autocast("none") == "none"
    assert precision.resolve_inference_dtype("bfloat16") == "bfloat16"
    assert precision.resolve_inference_dtype("float16") == "float16"
    with pytest.raises(ValueError, match="train.autocast must be"):
        precision.resolve_autocast("fp8")


def test_the_probe_answers_for_this_machine():
    """Whatever this CPU is, the answer is a bool and the same on a second call (cached)."""
    assert precision.bf16_is_fast("cpu") in (True, False)
    assert precision.bf16_is_fast("cpu") is precision.bf16_is_fast("cpu")
