"""Shared set-up of the serving tests (no tests here; fixtures `paths` and `service`): the tiny trained checkpoint and its LanceDB index,
built once per test session (`tasks.serving.tiny`, ~10 s on one core) and reused by every module, and
the params that point the service at them (`profile: tiny`, as the other stage tests)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT

ARTHUR = "Which magazine was started first, Arthur's Magazine or First for Women?"
DERRICKSON = "Were Scott Derrickson and Ed Wood of the same nationality?"
OBAMA = "Obama was born in Honolulu."
PARIS = "Paris is the capital of France."


def tiny_project(tmp_path_factory) -> dict[str, str]:
    """Paths of the session's tiny project (checkpoint, index, passages.jsonl, entities.jsonl)."""
    from tasks.serving.tiny import build_tiny_project

    return build_tiny_project(Path(tmp_path_factory.getbasetemp()) / "onegen-tiny-project")


def tiny_params(paths: dict[str, str], **serve):
    """params.yaml with the tiny profile, pointed at the tiny project; `serve` overrides serve.* keys."""
    from onegen_core.config import load_params

    overrides = {"profile": "tiny", "evaluate.checkpoint": paths["checkpoint"], "encode.uri": paths["index"],
                 "evaluate.max_new_tokens": 48, "evaluate.max_retrievals": 3, "serve.threads": 1}
    overrides.update({f"serve.{k}": v for k, v in serve.items()})
    return load_params(ROOT / "params.yaml", overrides)


def cli_options(paths: dict[str, str], index: str | None = None, checkpoint: str | None = None) -> list[str]:
    """The `onegen` options that select the tiny project (or another index / checkpoint)."""
    return ["--project-dir", str(ROOT), "--profile", "tiny", "--checkpoint", checkpoint or paths["checkpoint"],
            "--index", index or paths["index"], "-S", "serve.threads=1", "-S", "evaluate.max_new_tokens=48"]


@contextmanager
def one_thread():
    """One torch thread for the duration (restored after): beside another job on two cores, a second
    intra-op thread makes these tiny tensors ~50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """The tiny project's paths, for a module's tests (built once per session)."""
    with one_thread():
        return tiny_project(tmp_path_factory)


@pytest.fixture(scope="module")
def service(paths):
    """A `ModelService` over the tiny project, one per module."""
    from tasks.serving.service import ModelService

    return ModelService(tiny_params(paths))


@pytest.fixture(autouse=True)
def _one_thread():
    """Every serving test runs on one torch thread (see `one_thread`)."""
    with one_thread():
        yield


def assert_same_answer(a: dict, b: dict) -> None:
    """The same generation: text, answer, finish reason, counts, hit ids and positions exactly; scores
    to float rounding (a padded batch sums in another order)."""
    keys = ("question", "answer", "text", "finish_reason", "counts")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert len(a["retrievals"]) == len(b["retrievals"])
    for ra, rb in zip(a["retrievals"], b["retrievals"]):
        assert (ra["query"], ra["position"]) == (rb["query"], rb["position"])
        assert [h["id"] for h in ra["hits"]] == [h["id"] for h in rb["hits"]]
        assert [h["score"] for h in ra["hits"]] == pytest.approx([h["score"] for h in rb["hits"]], abs=1e-5)
