"""Shared fixtures: a character-level tokenizer (exact tensors can be written by hand) and a tiny
causal LM. No download; heavy imports stay inside fixtures."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def char_tokenizer():
    """Byte-level BPE with no merges: every ASCII character is one token, special tokens are atomic,
    so `len(text)` tokens per plain-ASCII text."""
    from onegen_core.method.backbone import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["abc"], vocab_size=258, min_frequency=1)
    assert tok("hello")["input_ids"].__len__() == 5
    return tok


@pytest.fixture()
def tiny_lm(char_tokenizer):
    from onegen_core.config import TinyBackboneConfig
    from onegen_core.method.backbone import build_tiny_backbone

    cfg = TinyBackboneConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             max_position_embeddings=512)
    return build_tiny_backbone(cfg, len(char_tokenizer), seed=0)


def char_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def free_port() -> int:
    """A TCP port free on loopback right now (a server started by a test binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
