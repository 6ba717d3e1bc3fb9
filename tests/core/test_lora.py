"""LoRA: adapters on the linear layers, the OneGen token rows of the embeddings still trained."""
from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("tie", [True, False])
def test_lora_trains_adapters_and_only_the_special_rows(tie):
    from onegen_core.config import LoraSettings, TinyBackboneConfig
    from onegen_core.method.backbone import build_tiny_backbone
    from onegen_core.method.lora import apply_lora, merged

    cfg = TinyBackboneConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             tie_word_embeddings=tie)
    lm = build_tiny_backbone(cfg, 300, seed=0)
    emb0 = lm.get_input_embeddings().weight.detach().clone()
    head0 = lm.get_output_embeddings().weight.detach().clone()
    layer0 = lm.model.layers[0].self_attn.q_proj.weight.detach().clone()
    special = [290, 291]
    peft_lm = apply_lora(lm, LoraSettings(r=4), special)
    trainable = [n for n, p in peft_lm.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "trainable_tokens" in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable)
    opt = torch.optim.SGD([p for p in peft_lm.parameters() if p.requires_grad], lr=1.0)
    ids = torch.tensor([[1, 290, 291, 5, 7]])
    for _ in range(2):  # LoRA B starts at zero: the second step moves the merged weights
        peft_lm(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    out = merged(peft_lm)
    changed = lambda a, b: (a - b).abs().sum(1).nonzero().flatten().tolist()  # noqa: E731
    assert changed(out.get_input_embeddings().weight, emb0) == special
    assert changed(out.get_output_embeddings().weight, head0) == special
    assert not torch.equal(out.model.layers[0].self_attn.q_proj.weight, layer0)


def test_lora_rejects_unknown_target_modules():
    from onegen_core.config import LoraSettings, TinyBackboneConfig
    from onegen_core.method.backbone import build_tiny_backbone
    from onegen_core.method.lora import apply_lora

    lm = build_tiny_backbone(TinyBackboneConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                                                num_kv_heads=2), 300, seed=0)
    with pytest.raises(ValueError, match="c_attn"):
        apply_lora(lm, LoraSettings(target_modules=["c_attn"]), [1])
