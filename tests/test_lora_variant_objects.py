"""LoRA's variants as objects (``addins/lora/``): one chosen per LoRA at construction, the old settings and
attributes unchanged, and a new variant added by one class without touching the core LoRA."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import addin_studio as studio
from addin_studio.addins.lora import LoRA, LoraVariant, Setting, VARIANTS, publish_settings, register_variant
from addin_studio.addins.lora.dora import DoraVariant
from addin_studio.addins.lora.kasa import KasaVariant
from addin_studio.addins.lora.mica import MicaVariant
from addin_studio.widget.settings import schema


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _lora(settings: str = "") -> tuple[nn.Module, LoRA]:
    model = _model()
    extra = f", {settings}" if settings else ""
    att = studio.attach(model, f"(LoRA.adapt_output, r=2{extra}): ...->(0){{inout1}}->...")
    (lora,) = [a for _, _, a in att.entries]
    return model, lora


@pytest.mark.parametrize(
    "settings, cls, flags",
    [
        ("", LoraVariant, {"dora": False, "kasa": False, "init": "kaiming", "rslora": False}),
        ("dora=true, rslora=true", DoraVariant, {"dora": True, "kasa": False, "rslora": True}),
        ("kasa=true, kasa_beta=0.5", KasaVariant, {"kasa": True, "kasa_beta": 0.5, "kasa_gamma": 1e-3}),
        ("init=mica", MicaVariant, {"init": "mica", "dora": False}),
    ],
)
def test_one_variant_object_per_lora_and_the_old_attributes(settings, cls, flags):
    _, lora = _lora(settings)
    assert type(lora.variant) is cls
    assert {k: getattr(lora, k) for k in flags} == flags
    assert not hasattr(lora, "lora_bias") and not hasattr(lora, "no_such_setting")


def test_the_public_signature_lists_core_then_every_variant_setting():
    names = list(inspect.signature(LoRA).parameters)
    assert names[:7] == ["point", "r", "alpha", "dropout", "param", "source_point", "layout"]
    assert set(names[7:]) == {
        "rslora",
        "init",
        "bias",
        "dora",
        "velora",
        "velora_groups",
        "velora_init",
        "velora_scale",
        "kasa",
        "kasa_beta",
        "kasa_gamma",
        "monteclora",
        "monteclora_samples",
        "monteclora_prior",
        "monteclora_scaler",
        "monteclora_kl",
        "monteclora_entropy",
        "monteclora_buffer",
    }


class _Halved(LoraVariant):
    """A toy variant: half the update (``halved=true``)."""

    switch = Setting("halved", False, "bool", "half the update")

    def scaling(self, r: int, alpha: float) -> float:
        return super().scaling(r, alpha) / 2


def test_a_new_variant_is_one_class_registered_without_touching_the_core():
    register_variant(_Halved)
    try:
        fields = {f.name: f for f in schema(LoRA)}
        assert (fields["halved"].kind, fields["halved"].help) == ("bool", "half the update")
        model, lora = _lora("halved=true, alpha=4")
        assert type(lora.variant) is _Halved and lora.scaling == 1.0  # alpha/r = 2, halved
        x = torch.randn(5, 6)
        torch.nn.init.normal_(lora.lora_B)
        expected = model[0].weight + 1.0 * lora.lora_B @ lora.lora_A
        assert torch.allclose(model[0](x), torch.nn.functional.linear(x, expected, model[0].bias), atol=1e-6)
        with pytest.raises(ValueError, match="LoRA dora=true cannot be combined with halved=true"):
            _lora("halved=true, dora=true")
    finally:
        VARIANTS.remove(_Halved)
        publish_settings()
    with pytest.raises(studio.ConfigError, match="LoRA does not take a setting 'halved'"):
        _lora("halved=true")
