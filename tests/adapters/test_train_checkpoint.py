"""A training checkpoint (`tasks.adapters.train_checkpoint`): the chosen resume, a rank's part written and
restored (with a stand-in DeepSpeed engine), and the final weights published."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class FakeEngine:
    """What `write_checkpoint` and `load_state` call on a DeepSpeed engine, recorded."""

    def __init__(self):
        import torch

        self.module = torch.nn.Linear(2, 1)
        self.saved: list[tuple[str, str, dict]] = []

    def save_checkpoint(self, path: str, tag: str, client_state: dict) -> None:
        Path(path, tag).mkdir(parents=True)
        Path(path, tag, "client.json").write_text(json.dumps(client_state))
        self.saved.append((path, tag, client_state))

    def load_checkpoint(self, path: str, tag: str):
        f = Path(path, tag, "client.json")
        return (path, json.loads(f.read_text())) if f.is_file() else (None, None)


def params(tmp_path, **over):
    from onegen_core.config import load_params

    return load_params(ROOT / "params.yaml", {"distributed.storage_path": str(tmp_path / "ray"), **over})


def test_chosen_resume_dir(tmp_path):
    from tasks.adapters.train_checkpoint import UntrustedResume, chosen_resume_dir

    assert chosen_resume_dir(params(tmp_path, **{"distributed.resume_from": "auto"})) == ""
    assert chosen_resume_dir(params(tmp_path, **{"distributed.resume_from": "never"})) == ""
    missing = tmp_path / "ray" / "nope"
    with pytest.raises(FileNotFoundError, match=f"distributed.resume_from={missing}: no such checkpoint directory"):
        chosen_resume_dir(params(tmp_path, **{"distributed.resume_from": str(missing)}))
    inside = tmp_path / "ray" / "onegen-x" / "checkpoint_000002"
    inside.mkdir(parents=True)
    assert chosen_resume_dir(params(tmp_path, **{"distributed.resume_from": str(inside)})) == str(inside.resolve())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(UntrustedResume):
        chosen_resume_dir(params(tmp_path, **{"distributed.resume_from": str(outside)}))


def test_a_ranks_part_restores_its_step_and_rng(tmp_path):
    """Rank 1 writes DeepSpeed's state under `deepspeed/step<N>` and its RNG; no HF copy, no state file
    (rank 0's). Restored, the RNG draws what it would have drawn after the save."""
    import torch

    from onegen_core.config import Params
    from tasks.adapters.train_checkpoint import DS_DIR, STATE_FILE, TrainedModel, load_state, write_checkpoint
    from tasks.adapters.worker_settings import WorkerSettings

    engine = FakeEngine()
    model = TrainedModel(engine, engine.module, tokenizer=None, special=[], zero3=False)
    settings = WorkerSettings(Params(), "onegen-x", "init", "t", "v", {}, "uri", "id", "h", "f")
    torch.manual_seed(3)
    write_checkpoint(tmp_path, model, settings, rank=1, step=4, total=10)
    after_save = torch.rand(3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DS_DIR, "rng_rank1.safetensors"]
    assert engine.saved == [(str(tmp_path / DS_DIR), "step4", {"step": 4})]

    state = {"step": 4, "total_steps": 10, "tag": "step4", "run_name": "onegen-x"}
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    torch.rand(5)  # the RNG moves on; restoring brings it back
    assert load_state(engine, tmp_path, rank=1) == 4
    assert torch.equal(torch.rand(3), after_save)
    (tmp_path / STATE_FILE).write_text(json.dumps({"tag": "step9"}))
    with pytest.raises(RuntimeError, match="DeepSpeed could not load tag step9"):
        load_state(engine, tmp_path, rank=1)


def test_publish_checkpoint_replaces_the_output_with_the_hf_copy(tmp_path):
    from tasks.adapters.train_checkpoint import HF_DIR, publish_checkpoint

    ckpt, dst = tmp_path / "checkpoint_000004", tmp_path / "models" / "core"
    with pytest.raises(FileNotFoundError, match="the final checkpoint has no Hugging Face weights"):
        publish_checkpoint(ckpt, dst)
    (ckpt / HF_DIR / "sub").mkdir(parents=True)
    (ckpt / HF_DIR / "config.json").write_text("{}")
    (ckpt / HF_DIR / "sub" / "w.bin").write_bytes(b"w")
    dst.mkdir(parents=True)
    (dst / "stale.txt").write_text("old")
    assert publish_checkpoint(ckpt, dst) == dst
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*")) == ["config.json", "sub", "sub/w.bin"]
    assert sorted(p.name for p in dst.parent.iterdir()) == ["core"]  # no temporary left beside it


def test_rng_states_hold_every_cuda_generator_and_restore_them(monkeypatch):
    """GPU dropout draws from the CUDA generators: a checkpoint keeps each device's state and a resume sets
    them all back (simulated devices: this machine has no GPU); a different device count is refused."""
    import pytest
    import torch

    from tasks.adapters.train_checkpoint import restore_rng_states, rng_states

    devices = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(devices))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(list(states)))
    states = rng_states()
    assert sorted(states) == ["cpu", "cuda:0", "cuda:1"]
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    states = rng_states()
    torch.rand(3)  # the generator moves on
    restore_rng_states(states)
    assert torch.equal(torch.rand(3), expected)  # the CPU generator is back where it was saved
    assert [[t.tolist() for t in r] for r in restored] == [[[1, 2], [3, 4]]]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match="2 CUDA devices, this process sees 1"):
        restore_rng_states(states)
