"""LoRA on grouped convolutions in PEFT's layout (``addins/lora_grouped.py``): the branch as PEFT computes
it, the settings it refuses, export to PEFT, and what merge / weighted combination say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import addin_studio as studio

peft = pytest.importorskip("peft")


def _net(groups: int = 2, **conv) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1, groups=groups, **conv), nn.Flatten(), nn.Linear(6 * 5 * 5, 3)
    ).eval()


X = torch.randn(2, 4, 5, 5)
GROUPED = "(LoRA.adapt_output, r=4, alpha=8, layout=peft): ...->(0){inout1}->..."


def _perturb(att, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in att.addins.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_branch_is_a_dense_conv_then_a_grouped_1x1_conv():
    model = _net()
    att = studio.attach(model, GROUPED)
    lora = att.addins["LoRA_0"]
    assert tuple(lora.lora_A.shape) == (4, 4 * 3 * 3) and tuple(lora.lora_B.shape) == (6, 2)
    assert torch.equal(model(X), _net()(X))  # B starts at zero
    _perturb(att)
    conv = model[0]
    h = torch.nn.functional.conv2d(X, lora.lora_A.view(4, 4, 3, 3), padding=1)  # every input channel
    # B: output channels 0-2 read rank channels 0-1, output channels 3-5 read rank channels 2-3
    upd = torch.cat(
        [
            torch.einsum("or,brhw->bohw", lora.lora_B[:3], h[:, :2]),
            torch.einsum("or,brhw->bohw", lora.lora_B[3:], h[:, 2:]),
        ],
        dim=1,
    )
    want = model[2](torch.flatten(conv._conv_forward(X, conv.weight, conv.bias) + 2.0 * upd, 1))
    torch.testing.assert_close(model(X), want, rtol=1e-5, atol=1e-5)
    att.detach()
    assert torch.equal(model(X), _net()(X))


def test_one_training_step_moves_only_the_lora_and_export_goes_to_peft(tmp_path):
    model = _net()
    att = studio.attach(model, GROUPED.replace("layout=peft", "layout=peft, dora=true"))
    base = {k: v.clone() for k, v in model.state_dict().items() if "addins" not in k}
    _perturb(att)
    before = {k: v.clone() for k, v in att.addins.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(X).square().sum().backward()
    opt.step()
    assert all(not torch.equal(v, before[k]) for k, v in att.addins.state_dict().items())
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items() if "addins" not in k)
    att.export_peft(tmp_path)
    theirs = peft.PeftModel.from_pretrained(_net(), str(tmp_path)).eval()
    state = theirs.state_dict()
    assert tuple(state["base_model.model.0.lora_A.default.weight"].shape) == (4, 4, 3, 3)
    assert tuple(state["base_model.model.0.lora_B.default.weight"].shape) == (6, 2, 1, 1)
    torch.testing.assert_close(theirs(X), model(X), rtol=1e-5, atol=1e-5)
    again = _net()
    studio.from_peft(again, tmp_path)
    torch.testing.assert_close(again(X), model(X), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            "r=3",
            "LoRA layout=peft on a Conv2d with groups=2 needs a rank divisible by the groups (PEFT's B is "
            "a grouped 1x1 conv), got r=3",
        ),
        (
            "r=4, init=pissa",
            "LoRA init=pissa needs the update as a weight, which a grouped conv LoRA in PEFT's "
            "layout does not have (groups=2): use init=kaiming or gaussian",
        ),
    ],
)
def test_refused_settings_leave_the_model_untouched(setting, message):
    model = _net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(studio.ConfigError) as info:
        studio.attach(model, f"(LoRA.adapt_output, {setting}, layout=peft): ...->(0){{inout1}}->...")
    assert message in str(info.value)
    assert not hasattr(model, "addins")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_reflect_padding_and_adapt_weight_are_refused():
    with pytest.raises(
        studio.ConfigError, match="zero-pads its A conv; this layer has padding_mode='reflect'"
    ):
        studio.attach(_net(padding_mode="reflect"), GROUPED)
    with pytest.raises(
        studio.ConfigError,
        match="grouped convolution in PEFT's layout is not an update of the weight: use adapt_output",
    ):
        studio.attach(_net(), GROUPED.replace("adapt_output", "adapt_weight"))


def test_balanced_grouped_lora_is_not_exported_and_merges(tmp_path):
    model = _net()
    att = studio.attach(model, GROUPED.replace("layout=peft", "layout=balanced"))
    _perturb(att)
    with pytest.raises(
        ValueError, match="'0': a conv LoRA goes to PEFT in PEFT's layout: attach it with layout=peft"
    ):
        att.export_peft(tmp_path)
    out = model(X)
    att.merge()  # the balanced layout is an update of the grouped weight
    torch.testing.assert_close(model(X), out, rtol=1e-5, atol=1e-5)


def test_weighted_combination_refuses_grouped_loras():
    model = _net()
    named = studio.NamedAdapters(model)
    named.add("a", GROUPED)
    named.add("b", GROUPED)
    with pytest.raises(
        ValueError,
        match="on a grouped convolution in PEFT's layout, whose rank channels are "
        "split among the groups: it cannot be combined",
    ):
        named.add_weighted_adapter("ab", {"a": 1.0, "b": 0.5})
