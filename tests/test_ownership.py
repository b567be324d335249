"""How add-ins are owned: one child module of the model (``addins``) while attached — every consequence
(len, print, state_dict keys, .to(), parameters for optimizers) and that detach removes them all."""

from __future__ import annotations

import copy

import torch
from torch import nn

import addin_studio as studio

CFG = (
    "(LoRA.adapt_output, r=2): ...->(0){inout1}->...\n"
    "(Adapter.adapt_output, bottleneck=3): ...->(2){inout1}->..."
)


def _seq():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def test_attached_addins_are_one_child_and_every_consequence_shows():
    model = _seq()
    x = torch.randn(5, 4)
    before_out, before_repr = model(x), repr(model)
    before_keys = list(model.state_dict())
    att = studio.attach(model, CFG)
    # one child, registered last: an nn.Sequential grows by one and still computes the same
    assert len(model) == 4 and model[3] is att.addins and model.addins is att.addins
    assert [n for n, _ in model.named_children()] == ["0", "1", "2", "addins"]
    torch.testing.assert_close(model(x), before_out)
    assert "(addins): AddinDict(" in repr(model) and "(LoRA_0): LoRA(" in repr(model)
    keys = list(model.state_dict())
    assert keys[: len(before_keys)] == before_keys
    assert keys[len(before_keys) :] == [
        "addins.LoRA_0.lora_A",
        "addins.LoRA_0.lora_B",
        "addins.Adapter_2.down.weight",
        "addins.Adapter_2.down.bias",
        "addins.Adapter_2.up.weight",
        "addins.Adapter_2.up.bias",
    ]
    # what an optimizer over model.parameters() that require grad gets: exactly the add-ins'
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in att.parameters()} and len(trainable) == 6
    # .to() follows the one rule: the add-ins move/cast with the model
    model.to(torch.float64)
    assert {p.dtype for p in att.addins.parameters()} == {torch.float64}
    model.to(torch.float32)
    # a copy of the model carries its add-ins (and the hooks that run them)
    with torch.no_grad():
        att.addins["LoRA_0"].lora_B.normal_()
    twin = copy.deepcopy(model)
    assert isinstance(twin.addins, type(att.addins)) and len(twin) == 4
    torch.testing.assert_close(twin(x), model(x))
    with torch.no_grad():
        twin.addins["LoRA_0"].lora_B.zero_()  # the twin's hooks run the twin's add-ins
    assert not torch.allclose(twin(x), model(x))
    with torch.no_grad():
        att.addins["LoRA_0"].lora_B.zero_()

    att.detach()
    assert len(model) == 3 and not hasattr(model, "addins")
    assert repr(model) == before_repr and list(model.state_dict()) == before_keys
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(x), before_out)


def test_the_child_name_never_shadows_the_models_own():
    model = _seq()
    model.addins = nn.Linear(1, 1)  # the user's own module called "addins"
    with studio.attach(model, CFG) as att:
        assert model.addins_1 is att.addins and isinstance(model.addins, nn.Linear)
        assert any(k.startswith("addins_1.LoRA_0.") for k in model.state_dict())
    assert not hasattr(model, "addins_1") and isinstance(model.addins, nn.Linear)
