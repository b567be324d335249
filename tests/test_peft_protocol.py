"""Add-ins own their PEFT form: export/from_peft dispatch on the class's ``peft`` mapping (no peft needed)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import addin_studio as studio
from addin_studio.addins import registry
from addin_studio.addins.interop import PeftImport, PeftMapping, peft_mapping
from addin_studio.config import Placement, Point


class ToyScalePeft(PeftMapping):
    """A made-up PEFT type: one per-feature scale vector after a layer."""

    peft_type = "TOY_SCALE"

    def export(self, entries):
        tensors = {f"{e.placement.target.module}.toy_scale.weight": e.addin.scale for e in entries}
        return tensors, {"target_modules": sorted(e.placement.target.module for e in entries)}

    def claims(self, name):
        return ".toy_scale." in name

    def read(self, config, tensors, model, addin, source):
        out = []
        for name, t in sorted(tensors.items()):
            path = name.partition(".toy_scale.")[0]
            point = Point(path, "post")
            out.append(PeftImport(Placement(addin, "adapt_output", point, point, {}), {"scale": t}))
        return out


class Scale(studio.AddinBase):
    peft = ToyScalePeft()

    def __init__(self, point):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(point.module.out_features))

    def forward(self, x):
        return x * self.scale


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def test_builtins_declare_their_peft_form():
    assert peft_mapping(studio.get_addin("LoRA")).peft_type == "LORA"
    assert peft_mapping(studio.get_addin("SSF")) is None
    assert peft_mapping(lambda point: nn.Identity()) is None


def test_a_custom_addin_exports_and_imports_through_its_own_mapping(tmp_path):
    x = torch.randn(5, 4)
    model = _net()
    att = studio.attach(
        model, "(Scale.adapt_output): ...->(0){inout1}->...\ntrainable(2)", addins={"Scale": Scale}
    )
    with torch.no_grad():
        att.addins["Scale_0"].scale.copy_(torch.arange(1.0, 7.0))
        model[2].weight.mul_(-1)
    expected = model(x)
    att.export_peft(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "TOY_SCALE" and config["target_modules"] == ["0"]
    assert config["modules_to_save"] == ["2"]
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert sorted(tensors) == [
        "base_model.model.0.toy_scale.weight",
        "base_model.model.2.bias",
        "base_model.model.2.weight",
    ]
    assert torch.equal(tensors["base_model.model.0.toy_scale.weight"], torch.arange(1.0, 7.0))

    fresh = _net()
    with pytest.raises(
        ValueError,
        match="only IA3, LoRA, PrefixTuning, TrainableTokens adapters can be imported; .* 'TOY_SCALE'",
    ):
        studio.from_peft(fresh, tmp_path)
    assert not hasattr(fresh, "addins")
    registry._REGISTRY["Scale"] = Scale
    try:
        back = studio.from_peft(fresh, tmp_path, modules_to_save=True)
        assert [p.addin for p in back.config.placements] == ["Scale"]
        assert back.config.trainable == ("2.bias", "2.weight")
        torch.testing.assert_close(fresh(x), expected)
    finally:
        del registry._REGISTRY["Scale"]


def test_mixing_peft_types_or_unmapped_addins_is_refused(tmp_path):
    model = _net()
    with studio.attach(
        model,
        "(Scale.adapt_output): ...->(0){inout1}->...\n(LoRA.adapt_output): ...->(2){inout1}->...",
        addins={"Scale": Scale},
    ) as att:
        with pytest.raises(ValueError, match="one peft_type; 'LoRA_2' is LORA, the others are TOY_SCALE"):
            att.export_peft(tmp_path)
    with studio.attach(model, "(Adapter.adapt_output): ...->(0){inout1}->...") as att:
        with pytest.raises(
            ValueError,
            match="covers IA3, LoRA, PrefixTuning, TrainableTokens only; 'Adapter_0' is Adapter.adapt_output",
        ):
            att.export_peft(tmp_path)
    assert not list(tmp_path.iterdir())
