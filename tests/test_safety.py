"""Strings reach only what they may: allow-listed methods, typed finite settings, limits, attach proves
the forward pass — every refusal a ConfigError with a position, the model untouched."""

import math

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import addin_studio as studio
from addin_studio import AddinBase, ConfigError, attach, hook_method, parse
from addin_studio.config import parser as config_parser
from addin_studio.examples import MLPAddin, TutorialMLP

ADDINS = {"MLPAddin": MLPAddin}
X = torch.randn(2, 64)


def snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "modules": [n for n, _ in model.named_modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
    }


def assert_untouched(model, snap):
    now = snapshot(model)
    assert now["flags"] == snap["flags"]
    assert now["modules"] == snap["modules"]
    assert now["hooks"] == snap["hooks"]
    assert list(now["state"]) == list(snap["state"])
    assert all(torch.equal(now["state"][k], snap["state"][k]) for k in snap["state"])


def refused(model, text, addins=ADDINS, x=X):
    snap = snapshot(model)
    with pytest.raises(ConfigError) as e:
        attach(model, text, addins=addins, example_input=x)
    assert_untouched(model, snap)
    assert e.value.position is not None
    return e.value


# -- 1. methods are an allow-list -----------------------------------------------------------------
METHOD_NAMES = sorted(set(dir(AddinBase)) | set(dir(nn.Module)) | {"adapt_input", "adapt_output"})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(METHOD_NAMES), side=st.sampled_from(["pre", "post"]))
def test_only_hook_methods_attach(name, side):
    if not name.isidentifier():
        return
    model = TutorialMLP()
    point = "{inout1}(fc2)" if side == "pre" else "(fc2){inout1}"
    text = f"(MLPAddin.{name}): ...->{point}->..."
    allowed = name in studio.methods_for(MLPAddin, side)
    assert allowed == (name.startswith("adapt_") and name.endswith("input" if side == "pre" else "output"))
    if allowed and "across" not in name:
        with attach(model, text, addins=ADDINS, example_input=X) as att:
            assert len(att.entries) == 1
    elif allowed:  # an across method at an {inout} point has no cached input: the proof catches it
        err = refused(model, text)
        assert "breaks the forward pass" in err.message
    else:
        err = refused(model, text)
        assert err.position == text.index(name)
        assert name in err.message


@pytest.mark.parametrize(
    "name",
    [
        "_apply",
        "__init__",
        "forward",
        "train",
        "zero_grad",
        "merge",
        "register_forward_hook",
        "inputs_cache",
        "fc1",
        "_call_impl",
    ],
)
def test_private_dunder_and_module_names_are_refused(name):
    model = TutorialMLP()
    err = refused(model, f"(MLPAddin.{name}): ...->(fc1){{in1}}->...->{{out1}}(fc3)->...")
    assert "not a hook method" in err.message or "has no method" in err.message
    assert err.position == err.text.index(name)


def test_issue_adapter_apply_is_refused():
    model = TutorialMLP()
    err = refused(model, "(Adapter._apply, act=tanh): ...->(fc1){in1}->...->{out1}(fc3)->...")
    assert "Adapter._apply is not a hook method" in err.message
    assert "adapt_across_input" in err.hint


class Gate(AddinBase):
    def __init__(self, point):
        super().__init__()
        self.g = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x

    @hook_method
    def gate_output(self, module, inputs, outputs):
        return outputs * (1 + self.g)

    def helper_output(self, module, inputs, outputs):  # not declared: not reachable from a string
        return outputs


def test_declared_hook_methods_attach_and_undeclared_do_not():
    assert studio.methods_for(Gate, "post") == ["adapt_across_output", "adapt_output", "gate_output"]
    model = TutorialMLP()
    with attach(
        model, "(Gate.gate_output): ...->(fc1){inout1}->...", addins={"Gate": Gate}, example_input=X
    ) as att:
        assert att.entries[0][1].method == "gate_output"
    err = refused(model, "(Gate.helper_output): ...->(fc1){inout1}->...", addins={"Gate": Gate})
    assert "not a hook method" in err.message and "@hook_method" in err.message


# -- settings: only the factory's parameters, typed, finite ---------------------------------------
@pytest.mark.parametrize(
    "text, words, needle",
    [
        ("(LoRA.adapt_output, r=2.5): ...->(fc1){inout1}->...", "setting 'r' must be int", "r="),
        ("(LoRA.adapt_output, r=true): ...->(fc1){inout1}->...", "setting 'r' must be int", "r="),
        ("(LoRA.adapt_output, alpha=abc): ...->(fc1){inout1}->...", "setting 'alpha' must be", "alpha="),
        ("(Adapter.adapt_output, act=3): ...->(fc1){inout1}->...", "setting 'act' must be str", "act="),
        ("(LoRA.adapt_output, rank=3): ...->(fc1){inout1}->...", "does not take a setting 'rank'", "rank"),
    ],
)
def test_settings_are_typed(text, words, needle):
    err = refused(TutorialMLP(), text)
    assert words in err.message
    assert err.position == text.index(needle)


def test_int_settings_accepted_for_floats():
    with attach(
        TutorialMLP(), "(LoRA.adapt_output, alpha=16, dropout=0): ...->(fc1){inout1}->...", example_input=X
    ) as att:
        assert att.entries[0][2].alpha == 16


# -- 5. number sizes, placements per string --------------------------------------------------------
@pytest.mark.parametrize(
    "text, words, needle",
    [
        ("(LoRA.adapt_output, r=" + "9" * 5000 + "): ...->(fc1){inout1}->...", "too long", "9"),
        ("(LoRA.adapt_output, alpha=1e309): ...->(fc1){inout1}->...", "infinite", "1e309"),
        ("(LoRA.adapt_output, alpha=-1e400): ...->(fc1){inout1}->...", "infinite", "-1e400"),
        ("(LoRA.adapt_output, r=10000000000000000): ...->(fc1){inout1}->...", "too large", "1000"),
        ("(A.m): ...->(blocks[" + "1" * 30 + "]){inout1}->...", "too large", "111"),
        ("(A.m): ...->(blocks[0:" + "1" * 30 + "]){inout1}->...", "too large", "111"),
        ("(A.m): ...->(fc1){inout" + "7" * 4400 + "}->...", "too large", "{inout"),
    ],
)
def test_numbers_are_bounded(text, words, needle):
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert words in e.value.message
    assert e.value.position == text.index(needle)


def test_placement_limit_is_per_string_and_checked_before_expansion():
    entry = "(A.m): ...->(b[0:{n}].c){{inout1}}->..."
    ten = ",".join(entry.format(n=100_000) for _ in range(10))
    assert len(ten) < 420
    with pytest.raises(ConfigError) as e:
        parse(ten)
    assert "more than 100,000 placements" in e.value.message
    assert e.value.position == ten.index("(A.m)", 1)  # the second entry crosses the limit
    # ranges of a trainable(...) entry count too
    with pytest.raises(ConfigError) as e:
        parse(entry.format(n=99_999) + "\ntrainable(b[0:2].w)")
    assert e.value.position == e.value.text.index("b[0:2]")
    assert len(parse(entry.format(n=50_000)).placements) == 50_000


def test_limit_is_fast():
    import time

    text = ",".join("(A.m): ...->(b[0:100000].c){inout1}->..." for _ in range(50))
    # CPU time of this process, not wall-clock time: other processes on a busy machine do not count
    start = time.process_time()
    with pytest.raises(ConfigError):
        parse(text)
    assert time.process_time() - start < 2.0  # idle: 0.2 ms; expanding 5 million placements takes minutes


@pytest.mark.parametrize("value", [0.1, 1e-300, 1e300, -2.5, 123456789012345, 7, 0.0, 1e16])
def test_settings_round_trip(value):
    cfg = parse(f"(LoRA.adapt_output, alpha={value!r}): ...->(fc1){{inout1}}->...")
    assert parse(str(cfg)) == cfg
    assert cfg.placements[0].settings["alpha"] == value


def test_inf_is_never_written():
    cfg = parse("(LoRA.adapt_output): ...->(fc1){inout1}->...")
    p = cfg.placements[0]
    bad = studio.Config([studio.Placement(p.addin, p.method, p.source, p.target, {"alpha": math.inf})])
    with pytest.raises(ValueError, match="not finite"):
        str(bad)
    model = TutorialMLP()
    snap = snapshot(model)
    with pytest.raises(ConfigError, match="setting 'alpha' must be a finite number"):
        attach(model, bad, example_input=X)
    assert_untouched(model, snap)


def test_trainable_pattern_errors_have_positions():
    model = TutorialMLP()
    text = "(MLPAddin.adapt_input): ...->{inout1}(fc2)->...\ntrainable(fc1, fc[0:2].bias)"
    err = refused(model, text)
    assert "matches no parameter" in err.message
    assert err.position == text.index("fc[0:2]")


def test_limits_documented():
    doc = open("docs/config-strings.md").read()
    assert f"{config_parser.MAX_PLACEMENTS:,}" in doc
    assert str(config_parser.MAX_NUMBER_CHARS) in doc


# -- 2. attach proves the forward -----------------------------------------------------------------
@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4).eval()


IMG = torch.randn(1, 3, 64, 64)


def test_issue_vpt_inside_a_block_is_refused_at_attach(vit):
    text = "(VPT.adapt_input, num_tokens=5): ...->{inout1}(blocks[2].mlp.fc2)->..."
    err = refused(vit, text, addins=None, x=IMG)
    assert "(VPT.adapt_input) at blocks.2.mlp.fc2:pre breaks the forward pass" in err.message
    assert "must match the size" in err.message
    assert err.position == text.index("fc2")
    assert "{inout1}(blocks[0:4])" in err.hint


def test_the_failing_placement_is_named_among_several(vit):
    text = (
        "(LoRA.adapt_output, r=2): ...->(blocks[0:4].attn.qkv){inout1}->...\n"
        "(VPT.adapt_input, num_tokens=3): ...->{inout1}(blocks[0:4])->...\n"
        "(VPT.adapt_input, num_tokens=2): ...->{inout1}(blocks[1].norm2)->..."
    )
    err = refused(vit, text, addins=None, x=IMG)
    assert "blocks.1.norm2:pre" in err.message
    assert err.position == text.index("norm2")


def test_vpt_under_an_across_adapter_is_refused(vit):
    text = (
        "(Adapter.adapt_across_output): ...->(blocks[0]){in1}->...->(blocks[2]){out1}->...\n"
        "(VPT.adapt_input, num_tokens=4): ...->{inout1}(blocks[1])->..."
    )
    err = refused(vit, text, addins=None, x=IMG)
    assert "breaks the forward pass" in err.message


def test_good_placements_attach_and_model_output_unchanged(vit):
    with torch.no_grad():
        before = vit(IMG)
    with attach(vit, "(VPT.adapt_input, num_tokens=3): ...->{inout1}(blocks[0:4])->...", example_input=IMG):
        pass
    with torch.no_grad():
        assert torch.equal(vit(IMG), before)


def test_proof_keeps_batchnorm_statistics():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).train()
    snap = snapshot(model)
    with attach(model, "(Adapter.adapt_output): ...->(1){inout1}->...", example_input=torch.randn(4, 8)):
        assert all(m.training for m in model.modules())
    assert_untouched(model, snap)


class Breaks(AddinBase):
    """Fails only on real tensors (reads a value): the proof falls back to a real eval forward."""

    def __init__(self, point):
        super().__init__()

    def adapt_output(self, module, inputs, outputs):
        if float(outputs.abs().sum()) >= 0:
            return outputs[:, :3]
        return outputs


def test_real_fallback_names_the_placement():
    model = TutorialMLP()
    text = "(Breaks.adapt_output): ...->(fc1){inout1}->..."
    err = refused(model, text, addins={"Breaks": Breaks})
    assert "(Breaks.adapt_output) at fc1:post breaks the forward pass" in err.message
