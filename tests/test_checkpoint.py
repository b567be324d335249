"""Adapter-only checkpoints: what is stored, save -> load on a fresh model, clear errors, no pickle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

import addin_studio as studio


class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1 = nn.Linear(4, 8)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(torch.relu(self.fc1(self.conv(x).mean((2, 3)))))


CFG = (
    "(LoRA.adapt_output, r=2, alpha=4): ...->(conv){inout1}->...\n"
    "(LoRA.adapt_output, r=3): ...->(fc1){inout1}->...\n"
    "(Adapter.adapt_output, bottleneck=4): ...->(fc1){inout1}->...\n"
    "trainable(head)"
)
X = torch.randn(2, 3, 6, 6)


def _fresh(seed: int = 0, classes: int = 3) -> Net:
    torch.manual_seed(seed)
    return Net(classes).eval()


def _trained(tmp_path):
    model = _fresh()
    att = studio.attach(model, CFG, example_input=X)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    path = tmp_path / "adapters.safetensors"
    att.save(path)
    return model, att, path


def test_file_holds_only_addin_and_kept_weights_with_config_in_metadata(tmp_path):
    model, att, path = _trained(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert keys == {
        "addins.LoRA_conv.lora_A",
        "addins.LoRA_conv.lora_B",
        "addins.LoRA_fc1.lora_A",
        "addins.LoRA_fc1.lora_B",
        "base.head.weight",
        "base.head.bias",
    } | {f"addins.Adapter_fc1.{n}" for n in att.addins["Adapter_fc1"].state_dict()}
    assert studio.parse(meta["config"]) == att.config
    placements = json.loads(meta["placements"])
    assert placements[0]["settings"] == {"r": 2, "alpha": 4}
    assert json.loads(meta["fingerprint"])["root"] == "Net"
    assert path.read_bytes()[:8] != b"\x80\x02\x8a\x0a"  # not a torch pickle
    att.detach()


def test_save_then_load_on_a_fresh_model_gives_equal_outputs(tmp_path):
    model, att, path = _trained(tmp_path)
    expected = model(X)
    fresh = _fresh()
    loaded = studio.load(fresh, path, example_input=X)
    assert torch.equal(fresh(X), expected)
    assert studio.count_parameters(fresh) == studio.count_parameters(model)
    assert str(loaded.config) == str(att.config)
    loaded.detach()
    assert torch.equal(fresh.fc1.weight, _fresh().fc1.weight)


def test_save_while_merged_stores_unmerged_base(tmp_path):
    model, att, _ = _trained(tmp_path)
    expected = model(X)
    att.merge()
    att.save(tmp_path / "m.safetensors")
    assert att.merged
    fresh = _fresh()
    studio.load(fresh, tmp_path / "m.safetensors")
    torch.testing.assert_close(fresh(X), expected)


def _untouched(model: Net) -> None:
    ref = _fresh()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    assert not hasattr(model, "addins")
    assert all(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_checkpoint_for_another_model_names_the_mismatch(tmp_path):
    _, _, path = _trained(tmp_path)
    other = _fresh(classes=5)
    with pytest.raises(ValueError, match=r"parameter 'head.weight' has shape \(5, 8\) here but \(3, 8\)"):
        studio.load(other, path)
    with pytest.raises(ValueError, match="saved for a Net, not a Sequential"):
        studio.load(nn.Sequential(nn.Linear(2, 2)), path)


def test_non_strict_load_checks_only_touched_modules(tmp_path):
    model = _fresh()
    att = studio.attach(model, "(LoRA.adapt_output, r=2): ...->(fc1){inout1}->...")
    att.save(tmp_path / "a.safetensors")
    other = _fresh(classes=5)  # a different head; fc1 is the same
    with pytest.raises(ValueError):
        studio.load(other, tmp_path / "a.safetensors")
    studio.load(other, tmp_path / "a.safetensors", strict=False).detach()

    class Wider(Net):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 9)
            self.head = nn.Linear(9, 3)

    with pytest.raises(ValueError, match=r"module 'fc1' parameter 'fc1.weight' is shape \(9, 4\) here"):
        studio.load(Wider(), tmp_path / "a.safetensors", strict=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_header"])
def test_corrupted_file_is_a_clear_error_and_model_untouched(tmp_path, damage):
    _, _, path = _trained(tmp_path)
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"not a checkpoint at all"
    else:
        data = data[:8] + b"{" * 20 + data[28:]
    path.write_bytes(data)
    model = _fresh()
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        studio.load(model, path)
    _untouched(model)


def test_missing_file_and_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError):
        studio.load(_fresh(), tmp_path / "nope.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    model = _fresh()
    with pytest.raises(ValueError, match="not an Addin Studio adapter checkpoint"):
        studio.load(model, tmp_path / "plain.safetensors")
    _untouched(model)


def test_tampered_tensor_shape_is_rejected_before_touching_the_model(tmp_path):
    from safetensors.torch import load_file, save_file

    _, _, path = _trained(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["addins.LoRA_fc1.lora_A"] = torch.zeros(5, 4)
    save_file(tensors, str(path), metadata=meta)
    model = _fresh()
    with pytest.raises(ValueError, match=r"'addins.LoRA_fc1.lora_A' has shape \(5, 4\)"):
        studio.load(model, path)
    _untouched(model)


def test_custom_addins_need_addins_argument(tmp_path):
    class Scale(studio.AddinBase):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(1) * 2)

        def forward(self, x):
            return x * self.s

    model = _fresh()
    att = studio.attach(model, "(Scale.adapt_output): ...->(fc1){inout1}->...", addins={"Scale": Scale})
    expected = model(X)
    att.save(tmp_path / "s.safetensors")
    fresh = _fresh()
    with pytest.raises(studio.ConfigError, match="unknown add-in 'Scale'"):
        studio.load(fresh, tmp_path / "s.safetensors")
    _untouched(fresh)
    studio.load(fresh, tmp_path / "s.safetensors", addins={"Scale": Scale})
    assert torch.equal(fresh(X), expected)
