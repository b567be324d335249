"""PEFT's ``bias="all"`` / ``bias="lora_only"`` (``checkpoint/peft_bias.py``): PEFT's trained base biases load
as kept-trainable biases and give PEFT's outputs; export writes them back; bad files are refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import addin_studio as studio
from peft_compare import from_peft_refusal

peft = pytest.importorskip("peft")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.lin0 = nn.Linear(4, 6)
        self.lin1 = nn.Linear(6, 2)

    def forward(self, x):
        h = self.conv(x).mean((2, 3))
        return self.lin1(torch.relu(self.lin0(self.norm(h))))


def _net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


X = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(3))
TARGETS = ["conv", "lin0"]
BIASES = {
    "all": ("conv.bias", "lin0.bias", "lin1.bias", "norm.bias"),
    "lora_only": ("conv.bias", "lin0.bias"),
}


def _peft_dir(tmp_path, bias: str):
    pm = peft.get_peft_model(_net(), peft.LoraConfig(target_modules=TARGETS, r=2, bias=bias))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:  # the LoRA factors and the biases PEFT trains
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(str(tmp_path))
    return pm.eval()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "addins" not in k}


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_peft_biases_load_as_trained_base_biases_and_go_back(bias, tmp_path):
    pm = _peft_dir(tmp_path / "theirs", bias)
    model = _net()
    before = _state(model)
    with pytest.raises(ValueError) as info:  # a file replaces base weights only when asked
        studio.from_peft(model, tmp_path / "theirs")
    assert str(info.value) == (
        f"{tmp_path / 'theirs' / 'adapter_model.safetensors'}: the adapter was trained with bias={bias!r} "
        f"and holds {len(BIASES[bias])} trained base bias(es) (e.g. '{sorted(BIASES[bias])[0]}') that "
        f"replace the model's own; pass base_biases=True to from_peft to load them"
    )
    assert not hasattr(model, "addins") and all(torch.equal(v, before[k]) for k, v in _state(model).items())
    att = studio.from_peft(model, tmp_path / "theirs", base_biases=True)
    assert att.config.trainable == BIASES[bias]
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad and "addins" not in n) == sorted(
        BIASES[bias]
    )
    assert not torch.allclose(_net()(X), pm(X), atol=1e-3)  # the biases and factors matter
    torch.testing.assert_close(model(X), pm(X), rtol=1e-5, atol=1e-6)
    att.export_peft(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["bias"] == bias and config["modules_to_save"] is None
    back = peft.PeftModel.from_pretrained(_net(), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(back(X), pm(X), rtol=1e-5, atol=1e-6)
    att.detach()  # like modules_to_save, the loaded biases are base weights now: detach keeps them
    peft_state = {
        k.removeprefix("base_model.model.").replace(".base_layer", ""): v for k, v in pm.state_dict().items()
    }
    for k, v in _state(model).items():
        assert torch.equal(v, peft_state[k] if k in BIASES[bias] else before[k]), k
    assert not hasattr(model, "addins")


def _rewrite(directory, change) -> None:
    path = directory / "adapter_model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    "bias, change, message",
    [
        (
            "lora_only",
            lambda t: t.update({"base_model.model.lin1.bias": torch.zeros(2)}),
            "tensor 'base_model.model.lin1.bias' is the bias of 'lin1', which the adapter does not adapt; "
            "bias='lora_only' holds only the adapted layers' biases",
        ),
        (
            "all",
            lambda t: t.update({"base_model.model.head.bias": torch.zeros(2)}),
            "tensor 'base_model.model.head.bias' is a bias (bias='all') of a layer this model does not have "
            "('head.bias')",
        ),
        (
            "all",
            lambda t: t.update({"base_model.model.lin1.bias": torch.zeros(2, dtype=torch.int64)}),
            "tensor 'base_model.model.lin1.bias' has dtype torch.int64; "
            "a floating-point tensor is needed (the "
            "model's is torch.float32)",
        ),
        (
            "all",
            lambda t: t.update({"base_model.model.norm.bias": torch.full((4,), float("nan"))}),
            "tensor 'base_model.model.norm.bias' holds non-finite values (inf or nan)",
        ),
        (
            "lora_only",
            lambda t: t.update({"base_model.model.lin0.base_layer.bias": torch.zeros(5)}),
            "tensor 'base_model.model.lin0.base_layer.bias' has shape (5,), the model's is (6,)",
        ),
    ],
)
def test_bad_bias_tensors_are_refused_by_name(bias, change, message, tmp_path):
    _peft_dir(tmp_path, bias)
    _rewrite(tmp_path, change)
    model = _net()
    assert from_peft_refusal(model, tmp_path) == f"{tmp_path / 'adapter_model.safetensors'}: {message}"
    assert all(p.requires_grad for p in model.parameters())


def test_bias_field_values_are_checked(tmp_path):
    _peft_dir(tmp_path, "none")
    path = tmp_path / "adapter_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "bias": "some"}))
    with pytest.raises(
        ValueError,
        match=r"adapter_config.json: field 'bias' must be 'none', 'all' or 'lora_only', "
        r"got 'some'",
    ):
        studio.from_peft(_net(), tmp_path)
    path.write_text(json.dumps({**config, "bias": 3}))
    with pytest.raises(ValueError, match=r"adapter_config.json: field 'bias' must be a str, got int 3"):
        studio.from_peft(_net(), tmp_path)
    path.write_text(json.dumps(config))  # bias="none": a stray bias tensor is no LoRA weight
    _rewrite(tmp_path, lambda t: t.update({"base_model.model.lin1.bias": torch.zeros(2)}))
    with pytest.raises(
        ValueError,
        match="tensor 'base_model.model.lin1.bias' is neither LORA weights nor in a "
        "module the config's modules_to_save lists",
    ):
        studio.from_peft(_net(), tmp_path)
