"""Stacked attachments compose: each keeps its add-ins trainable, detaching in any order restores what
was there, each saves and loads alone."""

import itertools

import pytest
import torch

import addin_studio as studio
from addin_studio.examples import TutorialMLP

X = torch.randn(3, 64)
A = "(LoRA.adapt_output, r=2): ...->(fc1){inout1}->...\ntrainable(fc3.weight)"
B = "(Adapter.adapt_output, bottleneck=4): ...->(fc2){inout1}->...\ntrainable(fc3.bias)"


def flags(model):
    return {n: p.requires_grad for n, p in model.named_parameters()}


def hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def perturb(att, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in att.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def model_with_frozen_bias():
    torch.manual_seed(0)
    m = TutorialMLP()
    m.fc2.bias.requires_grad_(False)  # a flag the user set before attaching: must come back
    return m


def test_second_attach_keeps_the_first_trainable():
    m = model_with_frozen_bias()
    a = studio.attach(m, A, example_input=X)
    b = studio.attach(m, B, example_input=X)
    f = flags(m)
    assert all(f[f"addins.{k}"] for k in ["LoRA_fc1.lora_A", "LoRA_fc1.lora_B"])
    assert all(v for n, v in f.items() if n.startswith("addins_1."))
    assert f["fc3.weight"] and f["fc3.bias"]  # each attachment's kept parameters
    assert not any(f[n] for n in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"])
    b.detach()
    a.detach()


@pytest.mark.parametrize("order", list(itertools.permutations([0, 1])))
def test_detach_in_any_order_restores_exactly(order):
    m = model_with_frozen_bias()
    flags0, state0, hooks0 = flags(m), {k: v.clone() for k, v in m.state_dict().items()}, hooks(m)
    with torch.no_grad():
        y0 = m(X)
    a = studio.attach(m, A, example_input=X)
    perturb(a, 1)
    with torch.no_grad():
        y_a = m(X)
    flags_a = flags(m)
    b = studio.attach(m, B, example_input=X)
    perturb(b, 2)
    with torch.no_grad():
        y_ab = m(X)
    assert not torch.allclose(y_ab, y_a)
    atts = [a, b]
    first, second = atts[order[0]], atts[order[1]]
    first.detach()
    if first is b:  # back to exactly the state with A alone
        assert flags(m) == flags_a
        with torch.no_grad():
            assert torch.equal(m(X), y_a)
    else:  # B alone: A's hooks gone, B's add-ins and kept parameter still trainable
        assert all(v for n, v in flags(m).items() if n.startswith("addins_1."))
        assert flags(m)["fc3.bias"] and not flags(m)["fc3.weight"]
    second.detach()
    assert flags(m) == flags0
    assert hooks(m) == hooks0
    assert list(m.state_dict()) == list(state0)
    assert all(torch.equal(v, state0[k]) for k, v in m.state_dict().items())
    with torch.no_grad():
        assert torch.equal(m(X), y0)


def test_each_attachment_saves_and_loads_alone(tmp_path):
    m = model_with_frozen_bias()
    a = studio.attach(m, A, example_input=X)
    perturb(a, 1)
    b = studio.attach(m, B, example_input=X)
    perturb(b, 2)
    b.save(tmp_path / "b.safetensors")
    a.save(tmp_path / "a.safetensors")
    a.detach()
    with torch.no_grad():
        y_b = m(X)
    fresh = model_with_frozen_bias()
    with studio.load(fresh, tmp_path / "b.safetensors", example_input=X) as loaded:
        assert [k for k, _, _ in loaded.entries] == ["Adapter_fc2"]
        with torch.no_grad():
            assert torch.equal(fresh(X), y_b)
    b.detach()
    with studio.load(fresh, tmp_path / "a.safetensors", example_input=X) as loaded:
        assert [k for k, _, _ in loaded.entries] == ["LoRA_fc1"]
