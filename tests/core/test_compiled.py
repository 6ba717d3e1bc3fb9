"""`train.compile`: the trainable layers run through torch.compile and compute what they compute eagerly
(up to the rounding of fused kernels); the checkpoint is that of the plain modules; ZeRO-3 refuses it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onegen_core.config import ConfigError, LossConfig, load_params, parse_overrides
from onegen_core.method.model import OneGenModel
from onegen_core.training.compiled import compile_top_layers
from tests.core.test_frozen_layers import lm_of

ROOT = Path(__file__).resolve().parents[2]


def _lm():
    return lm_of("qwen2", 100, layers=3)  # the frozen-layer tests' tiny model


def _loss_and_grads(model: OneGenModel, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    h = model.hidden_states(ids, mask)  # (rows, seq, dim)
    loss = (h[mask.bool()] ** 2).mean()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_trains_like_eager(eager: OneGenModel, compiled: OneGenModel, shapes: list[tuple[int, int, int]],
                              g: torch.Generator) -> list[set[str]]:
    """Batches of (rows, seq, padding of row 0): the compiled model's loss and gradients are the eager
    model's within rounding. Returns, per batch, the names of the parameters that got a gradient."""
    trained = []
    for rows, seq, pad in shapes:
        ids = torch.randint(0, 100, (rows, seq), generator=g)
        mask = torch.ones(rows, seq, dtype=torch.long)
        mask[0, seq - pad:] = 0
        a, ga = _loss_and_grads(eager, ids, mask)
        b, gb = _loss_and_grads(compiled, ids, mask)
        assert b == pytest.approx(a, rel=1e-4)
        assert ga.keys() == gb.keys() and ga  # the same parameters train
        for n in ga:
            torch.testing.assert_close(gb[n], ga[n], rtol=1e-3, atol=1e-5)
        trained.append(set(ga))
    return trained


@pytest.mark.slow
# a layer past the recompile limit would fall back to eager silently and pass the comparisons below
@torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)
def test_compiled_top_layers_compute_the_eager_values_and_keep_the_state_dict():
    eager, compiled = OneGenModel(_lm(), LossConfig()), OneGenModel(_lm(), LossConfig())
    for m in (eager, compiled):
        m.train_top_layers(2)
    keys = list(compiled.state_dict())
    assert compile_top_layers(compiled.lm, 2) == 2
    assert list(compiled.state_dict()) == keys  # compiled in place: the checkpoint's names do not change
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    g = torch.Generator().manual_seed(0)
    # rows of several lengths, with padding and without, and a single row: the graphs a run meets
    _assert_trains_like_eager(eager, compiled, [(3, 11, 4), (2, 7, 0), (1, 9, 0), (4, 13, 6)], g)
    with torch.no_grad():  # validation runs the compiled layers without gradients
        ids = torch.randint(0, 100, (2, 6), generator=g)
        mask = torch.ones_like(ids)
        torch.testing.assert_close(compiled.hidden_states(ids, mask), eager.hidden_states(ids, mask),
                                   rtol=1e-4, atol=1e-5)
    assert torch._dynamo.config.recompile_limit >= 32
    # the compiled layers did run as graphs (an eager fallback would pass the comparisons above too)
    layers = compiled.lm.get_decoder().layers
    assert [layer._compiled_call_impl is not None for layer in layers] == [False, True, True]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1


@pytest.mark.slow
@torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)
def test_compiled_lora_layers_compute_the_eager_values_and_merge_to_the_same_checkpoint():
    """`lora.enabled` with `train.compile`: the peft-wrapped layers (adapters on every linear, the OneGen
    token rows trainable) compile, give the eager loss and gradients, and merge into the same plain model."""
    from onegen_core.config import LoraSettings
    from onegen_core.method.lora import apply_lora, merged

    def lora_lm():
        return apply_lora(_lm(), LoraSettings(enabled=True, dropout=0.0), [97, 98, 99])

    eager_lm, compiled_lm = lora_lm(), lora_lm()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero B matrices, so the adapters change the output and get A gradients
        for n, prm in eager_lm.named_parameters():
            if "lora_B" in n:
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.02)
    compiled_lm.load_state_dict(eager_lm.state_dict())
    assert compile_top_layers(compiled_lm, 0) == 3
    eager, compiled = OneGenModel(eager_lm, LossConfig()), OneGenModel(compiled_lm, LossConfig())
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for names in _assert_trains_like_eager(eager, compiled, [(3, 11, 4), (2, 7, 0), (1, 9, 0)], g):
        assert any("lora_A" in n for n in names) and any("trainable_tokens" in n for n in names)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    plain_eager, plain_compiled = merged(eager_lm), merged(compiled_lm)
    assert list(plain_compiled.state_dict()) == list(plain_eager.state_dict())
    assert not any("lora" in k for k in plain_compiled.state_dict())
    with torch.no_grad():
        ids = torch.randint(0, 100, (2, 6), generator=g)
        torch.testing.assert_close(plain_compiled(ids).logits, plain_eager(ids).logits, rtol=1e-4, atol=1e-5)


def test_compile_is_on_in_the_cpu_default_and_off_where_zero3_runs():
    from tasks.adapters.deepspeed_config import check_compile_support, load_ds_config

    default = load_params(ROOT / "params.yaml")
    assert default.train.compile
    profiles = sorted(f.stem for f in (ROOT / "profiles").glob("*.yaml"))
    assert len(profiles) >= 6
    for profile in profiles:
        p = load_params(ROOT / "params.yaml", parse_overrides([f"profile={profile}"]))
        assert not p.train.compile, profile
        check_compile_support(load_ds_config(ROOT / p.distributed.deepspeed_config), p)  # every profile runs as set
    zero3 = load_ds_config(ROOT / "infra/deepspeed/zero3.json")
    check_compile_support(load_ds_config(ROOT / "infra/deepspeed/zero0.json"), default)
    check_compile_support(zero3, load_params(ROOT / "params.yaml", parse_overrides(["profile=tiny"])))
    with pytest.raises(ConfigError, match=r"train\.compile: true does not go with the ZeRO-3 config"):
        check_compile_support(zero3, default)


def test_the_train_stage_refuses_compile_with_zero3_before_building_anything(tmp_path, monkeypatch):
    from tasks import train

    monkeypatch.chdir(tmp_path)
    p = load_params(ROOT / "params.yaml", parse_overrides([
        "profile=tiny", "train.compile=true", f"distributed.deepspeed_config={ROOT / 'infra/deepspeed/zero3.json'}",
        f"distributed.storage_path={tmp_path / 'ray'}", f"train_data.init_dir={tmp_path / 'init'}"]))
    with pytest.raises(ConfigError, match=r"train\.compile: true does not go with the ZeRO-3 config"):
        train.run(p)
    assert list(tmp_path.iterdir()) == []  # no run directory, no initial backbone, no MLflow store
