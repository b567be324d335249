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
SETTINGS = {"TrainableTokens": ', indices="0, 3"', "Convpass": ", bottleneck=4", "Adapter": ", bottleneck=4",
            "AdaptFormer": ", bottleneck=4", "LoRA": ", r=2", "FacT_tt": ", r=2, dropout=0", "FacT_tk": ", r=2, dropout=0",
            "VPT": ", num_tokens=2"}
FORMS = {"post": "...->({t}){{inout1}}->...", "pre": "...->{{inout1}}({t})->...",
         "across": "...->{{in1}}({t}){{out1}}->...", "across_pre": "...->{{in1}}({a})->...->{{out1}}({b})->..."}


def _string(name: str, method: str, form: str) -> str:
    target = TARGET.get(name, "fc2")
    a, b = ("attn", "fc1") if target == "attn" else ("fc1", "fc2")  # inputs of one shape: (2, 5, 8)
    return f"({name}.{method}{SETTINGS.get(name, '')}): " + FORMS[form].format(t=target, a=a, b=b)

# what the grammar accepts: (add-in, method, form); every other name and form is refused
ACCEPTED = {
    ("Adapter", "adapt_output", "post"), ("Adapter", "adapt_input", "pre"),
    ("Adapter", "adapt_across_output", "across"), ("Adapter", "adapt_across_input", "across_pre"),
    ("AdaptFormer", "adapt_across_output", "across"), ("AdaptFormer", "adapt_across_input", "across_pre"),
    ("Convpass", "adapt_across_output", "across"), ("Convpass", "adapt_across_input", "across_pre"),
    ("FacT_tk", "adapt_output", "post"), ("FacT_tk", "adapt_weight", "post"),
    ("FacT_tt", "adapt_output", "post"), ("FacT_tt", "adapt_weight", "post"),
    ("IA3", "adapt_output", "post"), ("IA3", "adapt_input", "pre"),
    ("Identity", "adapt_output", "post"), ("Identity", "adapt_input", "pre"),
    ("Identity", "adapt_across_output", "across"), ("Identity", "adapt_across_input", "across_pre"),
    ("LoRA", "adapt_output", "post"), ("LoRA", "adapt_weight", "post"),
    ("PrefixTuning", "adapt_forward", "pre"),
    ("SSF", "adapt_output", "post"), ("SSF", "adapt_input", "pre"),
    ("TrainableTokens", "adapt_weight", "post"),
    ("VPT", "adapt_input", "pre"),
}


def _names(cls: type) -> list[str]:
    return sorted(n for n in dir(cls) if not n.startswith("_"))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + ("forward" in m.__dict__)
               for m in model.modules())


@pytest.mark.parametrize("traced", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["no_example", "example_input"])
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
