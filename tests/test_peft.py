"""PEFT interop both ways: our export loads in peft.PeftModel, PEFT's adapters load with from_peft."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

import addin_studio as studio

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft")
timm = pytest.importorskip("timm")
X = torch.randn(2, 3, 32, 32)


def _vit(state=None):
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5
    ).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def _perturb(params):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)


def test_export_loads_in_peft_with_equal_outputs(tmp_path):
    model = _vit()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = studio.strategies.lora(model, ["qkv", "fc1"], r=4, alpha=8, trainable=["head"])
    att = studio.attach(model, cfg)
    _perturb([p for p in model.parameters() if p.requires_grad])
    expected = model(X)
    att.export_peft(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["task_type"] is None and config["bias"] == "none" and config["lora_dropout"] == 0.0
    assert config["modules_to_save"] == ["head"]
    assert len(config["target_modules"]) == 24
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert "base_model.model.blocks.0.attn.qkv.lora_A.weight" in keys
    assert "base_model.model.blocks.11.mlp.fc1.lora_B.weight" in keys
    loaded = peft.PeftModel.from_pretrained(_vit(state), str(tmp_path)).eval()
    torch.testing.assert_close(loaded(X), expected, rtol=1e-5, atol=1e-6)


def test_export_with_mixed_ranks_uses_rank_pattern(tmp_path):
    model = _vit()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    att = studio.attach(
        model,
        "(LoRA.adapt_output, r=2, alpha=3): ...->(blocks[0].attn.qkv){inout1}->...\n"
        "(LoRA.adapt_output, r=4, alpha=4): ...->(blocks[1:3].attn.qkv){inout1}->...",
    )
    _perturb(att.addins.parameters())
    expected = model(X)
    att.export_peft(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["rank_pattern"] == {"^blocks.0.attn.qkv$": 2}
    loaded = peft.PeftModel.from_pretrained(_vit(state), str(tmp_path)).eval()
    torch.testing.assert_close(loaded(X), expected, rtol=1e-5, atol=1e-6)
    # and back again
    ours = _vit(state)
    back = studio.from_peft(ours, tmp_path)
    assert [a.r for _, _, a in back.entries] == [2, 4, 4]
    assert [a.alpha for _, _, a in back.entries] == [3.0, 4.0, 4.0]
    torch.testing.assert_close(ours(X), expected, rtol=1e-5, atol=1e-6)


def test_peft_adapter_imports_with_equal_outputs(tmp_path):
    base = _vit()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    config = peft.LoraConfig(
        r=8, lora_alpha=16, target_modules=["qkv", "attn.proj"], modules_to_save=["head"]
    )
    pm = peft.get_peft_model(base, config)
    _perturb([p for n, p in pm.named_parameters() if "lora_" in n or "modules_to_save" in n])
    pm.eval()
    expected = pm(X)
    pm.save_pretrained(str(tmp_path))
    model = _vit(state)
    att = studio.from_peft(model, tmp_path, modules_to_save=["head"])
    assert {p.target.module for p in att.config.placements} >= {"blocks.0.attn.qkv", "blocks.0.attn.proj"}
    assert att.config.trainable == ("head.bias", "head.weight")
    torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-6)
    att.merge()
    torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-5)


def test_export_refuses_what_peft_cannot_hold(tmp_path):
    model = _vit()
    with studio.attach(model, "(LoRA.adapt_output): ...->(patch_embed.proj){inout1}->...") as att:
        with pytest.raises(
            ValueError,
            match="'patch_embed.proj': a conv LoRA goes to PEFT in PEFT's layout: attach it with layout=peft",
        ):
            att.export_peft(tmp_path)
    with studio.attach(model, "(SSF.adapt_output): ...->(blocks[0].norm1){inout1}->...") as att:
        with pytest.raises(
            ValueError, match="PEFT export covers IA3, LoRA, PrefixTuning, TrainableTokens only"
        ):
            att.export_peft(tmp_path)
    with studio.attach(
        model, "(LoRA.adapt_output): ...->(head){inout1}->...\ntrainable(blocks.0.norm1.weight)"
    ) as att:
        with pytest.raises(ValueError, match="cover only part of 'blocks.0.norm1'"):
            att.export_peft(tmp_path)
    # biases alone are PEFT's bias field: every bias ("all") or the adapted layers' ("lora_only"), no
    # other set
    with studio.attach(
        model, "(LoRA.adapt_output): ...->(head){inout1}->...\ntrainable(blocks.0.norm1.bias)"
    ) as att:
        with pytest.raises(
            ValueError,
            match=r"as biases \(bias='lora_only': those of the adapted layers, "
            r"bias='all': every bias\); the kept-trainable "
            r"'blocks.0.norm1.bias' is neither",
        ):
            att.export_peft(tmp_path)


def test_from_peft_errors_leave_model_untouched(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LOHA"}))
    model = _vit()
    with pytest.raises(
        ValueError, match="only IA3, LoRA, PrefixTuning, TrainableTokens adapters can be imported; .* 'LOHA'"
    ):
        studio.from_peft(model, tmp_path)
    other = nn.Sequential(nn.Linear(4, 4))
    pm = peft.get_peft_model(
        nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), peft.LoraConfig(r=2, target_modules=["1"])
    )
    pm.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="LoRA weights for module '1', which this Sequential does not have"):
        studio.from_peft(other, tmp_path)
    assert not hasattr(other, "addins")
    conv = peft.get_peft_model(
        nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), peft.LoraConfig(r=2, target_modules=["0"])
    )
    conv.save_pretrained(str(tmp_path / "conv"))
    ungrouped = nn.Sequential(nn.Conv2d(4, 4, 3))  # PEFT's grouped B is [4, r/groups, 1, 1]
    with pytest.raises(
        ValueError, match=r"lora_B for '0' has shape \(4, 1\); this model's layer needs \(4, 2\)"
    ):
        studio.from_peft(ungrouped, tmp_path / "conv")
    assert not hasattr(ungrouped, "addins")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        studio.from_peft(other, tmp_path)
