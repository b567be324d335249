"""Every public attribute name of every built-in add-in, written as the method in a string: refused at
attach with a ConfigError (model untouched), or attached and trained a step without error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import addin_studio as studio
from addin_studio.addins.base import AddinBase, methods_for

timm_attention = pytest.importorskip("timm.models.vision_transformer").Attention

IDS = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])  # 1 class token + a 2x2 patch grid


class Toy(nn.Module):
    """Token ids -> embedding -> timm attention -> fc1 -> ReLU -> fc2 -> head: a place for every built-in."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.attn = timm_attention(8, num_heads=2)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        x = x + self.attn(x)
        x = self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean(1))


# where each built-in builds on Toy (a ConfigError from building would hide the method check)
TARGET = {"TrainableTokens": "emb", "PrefixTuning": "attn", "Convpass": "attn", "VPT": "fc1"}
NEEDS_EXAMPLE = {"Convpass", "VPT"}  # sized from the traced token sequence
SETTINGS = {
    "TrainableTokens": ', indices="0, 3"',
    "Convpass": ", bottleneck=4",
    "Adapter": ", bottleneck=4",
    "AdaptFormer": ", bottleneck=4",
    "LoRA": ", r=2",
    "FacT_tt": ", r=2, dropout=0",
    "FacT_tk": ", r=2, dropout=0",
    "VPT": ", num_tokens=2",
}
FORMS = {
    "post": "...->({t}){{inout1}}->...",
    "pre": "...->{{inout1}}({t})->...",
    "across": "...->{{in1}}({t}){{out1}}->...",
    "across_pre": "...->{{in1}}({a})->...->{{out1}}({b})->...",
}


def _string(name: str, method: str, form: str) -> str:
    target = TARGET.get(name, "fc2")
    a, b = ("attn", "fc1") if target == "attn" else ("fc1", "fc2")  # inputs of one shape: (2, 5, 8)
    return f"({name}.{method}{SETTINGS.get(name, '')}): " + FORMS[form].format(t=target, a=a, b=b)


# what the grammar accepts: (add-in, method, form); every other name and form is refused
ACCEPTED = {
    ("Adapter", "adapt_output", "post"),
    ("Adapter", "adapt_input", "pre"),
    ("Adapter", "adapt_across_output", "across"),
    ("Adapter", "adapt_across_input", "across_pre"),
    ("AdaptFormer", "adapt_across_output", "across"),
    ("AdaptFormer", "adapt_across_input", "across_pre"),
    ("Convpass", "adapt_across_output", "across"),
    ("Convpass", "adapt_across_input", "across_pre"),
    ("FacT_tk", "adapt_output", "post"),
    ("FacT_tk", "adapt_weight", "post"),
    ("FacT_tt", "adapt_output", "post"),
    ("FacT_tt", "adapt_weight", "post"),
    ("IA3", "adapt_output", "post"),
    ("IA3", "adapt_input", "pre"),
    ("Identity", "adapt_output", "post"),
    ("Identity", "adapt_input", "pre"),
    ("Identity", "adapt_across_output", "across"),
    ("Identity", "adapt_across_input", "across_pre"),
    ("LoRA", "adapt_output", "post"),
    ("LoRA", "adapt_weight", "post"),
    ("PrefixTuning", "adapt_forward", "pre"),
    ("SSF", "adapt_output", "post"),
    ("SSF", "adapt_input", "pre"),
    ("TrainableTokens", "adapt_weight", "post"),
    ("VPT", "adapt_input", "pre"),
}


def _names(cls: type) -> list[str]:
    return sorted(n for n in dir(cls) if not n.startswith("_"))


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + ("forward" in m.__dict__) for m in model.modules()
    )


@pytest.mark.parametrize(
    "traced", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["no_example", "example_input"]
)
def test_every_attribute_name_is_refused_or_runs(traced):
    torch.manual_seed(0)
    model = Toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model(IDS)
    accepted, refused = set(), 0
    for name, cls in studio.available_addins().items():
        for method in _names(cls):
            for form in FORMS:
                text = _string(name, method, form)
                try:
                    att = studio.attach(model, text, example_input=IDS if traced else None)
                except studio.ConfigError:
                    refused += 1
                    assert _hooks(model) == 0, text  # a refusal leaves the model untouched
                    continue
                try:
                    out = model(IDS)
                    if name != "Identity":  # the one built-in with no parameters: nothing to train
                        out.square().sum().backward()
                    assert out.shape == (2, 3) and torch.isfinite(out).all(), text
                except Exception as exc:  # an accepted string must run
                    raise AssertionError(f"{text} attached, then {type(exc).__name__}: {exc}") from exc
                finally:
                    att.detach()
                    model.zero_grad(set_to_none=True)
                accepted.add((name, method, form))
                assert _hooks(model) == 0, text
    assert accepted == {a for a in ACCEPTED if traced or a[0] not in NEEDS_EXAMPLE}
    assert refused > 1000
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(IDS), reference)


def test_across_method_at_an_inout_point_is_refused_at_attach():
    model = Toy()
    reference = model(IDS)
    text = "(Adapter.adapt_across_output): ...->(fc2){inout1}->..."
    for example in (None, IDS):
        with pytest.raises(studio.ConfigError) as err:
            studio.attach(model, text, example_input=example)
        msg = str(err.value)
        assert "adapt_across_output reads the feature stored at an {in} point" in msg
        assert "use {in1}...{out1}" in msg and "adapt_output" in msg
        caret_line = msg.splitlines()[msg.splitlines().index("  " + text) + 1]
        assert caret_line.index("^") == 2 + text.index("adapt_across_output")
        assert _hooks(model) == 0
    assert torch.equal(model(IDS), reference)


def test_offers_declares_the_methods_a_string_may_name():
    from addin_studio.examples import MLPAddin

    both = ["adapt_across_input", "adapt_across_output", "adapt_input", "adapt_output"]
    assert MLPAddin.offers is None  # the tutorial's add-in, unchanged: all four of its methods
    assert sorted(methods_for(MLPAddin, "pre") + methods_for(MLPAddin, "post")) == both
    vpt = studio.get_addin("VPT")
    assert vpt.offers == ("adapt_input",) and callable(vpt.adapt_output)  # inherited, not offered
    assert methods_for(vpt, "post") == [] and methods_for(vpt, "pre") == ["adapt_input"]

    class Narrow(AddinBase):
        offers = ("adapt_output",)

    assert methods_for(Narrow, "post") == ["adapt_output"] and methods_for(Narrow, "pre") == []

    class Wider(Narrow):  # a subclass's own hook methods join what its parent offers
        @studio.hook_method
        def gate_output(self, module, inputs, outputs):
            return outputs

    assert Wider.offers == ("adapt_output", "gate_output")
    assert methods_for(Wider, "post") == ["adapt_output", "gate_output"]


@pytest.mark.parametrize(
    "offers, words",
    [
        (("adapt_outptu",), "offers names 'adapt_outptu', which is not a hook method of Bad"),
        (("forward",), "offers names 'forward', which is not a hook method of Bad"),
        (("_helper",), "offers names '_helper', which is not a hook method of Bad"),
        ("adapt_output", "Bad.offers must be a tuple of method names, not 'adapt_output'"),
    ],
)
def test_offers_naming_no_hook_method_is_a_type_error_when_the_class_is_defined(offers, words):
    with pytest.raises(TypeError) as err:
        type("Bad", (AddinBase,), {"offers": offers, "_helper": lambda self, m, i, o: o})
    assert words in str(err.value)


def test_a_method_not_offered_reads_as_no_method_with_the_offered_ones():
    model = Toy()
    text = "(SSF.adapt_across_output): ...->{in1}(fc2){out1}->..."
    with pytest.raises(studio.ConfigError) as err:
        studio.attach(model, text)
    assert err.value.message == (
        "SSF has no method 'adapt_across_output' (it offers adapt_output, adapt_input)"
    )
    assert err.value.position == text.index("adapt_across_output")
    assert _hooks(model) == 0


class Bypass(AddinBase):
    """A user add-in with an across method of its own name."""

    def __init__(self, point):
        super().__init__()
        self.g = nn.Parameter(torch.ones(()))

    @studio.hook_method(across=True)
    def bypass_output(self, module, inputs, outputs):
        return outputs + self.g * self.inputs_cache


def test_hook_method_across_goes_at_an_out_point_only():
    model = Toy()
    x = torch.randn(2, 8)
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    h = net[0](x)
    expected = net[1](h) + h
    with studio.attach(net, "(Bypass.bypass_output): ...->{in1}(1){out1}->...", addins={"Bypass": Bypass}):
        assert torch.allclose(net(x), expected)
    text = "(Bypass.bypass_output): ...->(1){inout1}->..."
    with pytest.raises(studio.ConfigError) as err:
        studio.attach(net, text, addins={"Bypass": Bypass})
    assert "bypass_output reads the feature stored at an {in} point" in err.value.message
    assert err.value.hint == (
        "use {in1}...{out1} to read one point's feature at another, or adapt_output at this {inout} point"
    )  # AddinBase's, offered: Bypass declares no offers
    assert not net[1]._forward_hooks and _hooks(model) == 0
    text = "(Adapter.adapt_output): ...->{in1}(fc2){out1}->..."
    with pytest.raises(studio.ConfigError) as err:
        studio.attach(model, text)
    assert err.value.message == (
        "(Adapter.adapt_output) from fc2:pre to fc2:post would drop the feature of "
        "fc2:pre: adapt_output does not read across (only adapt_across_* and "
        "@hook_method(across=True) methods do)"
    )
    assert err.value.hint == "use one of: adapt_across_output"
    assert _hooks(model) == 0
