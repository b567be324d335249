"""Crafted checkpoint files and PEFT directories: each refusal is one clear error naming the file and
the field or tensor, and nothing is loaded into the model."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import addin_studio as studio
from addin_studio.examples import TutorialMLP

X = torch.randn(2, 64)
CFG = "(LoRA.adapt_output, r=2, alpha=4): ...->(fc1){inout1}->...\ntrainable(fc3)"


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        [n for n, _ in model.named_modules()],
    )


def assert_untouched(model, snap):
    state, flags, hooks, modules = snapshot(model)
    assert list(state) == list(snap[0]) and all(torch.equal(state[k], snap[0][k]) for k in state)
    assert (flags, hooks, modules) == snap[1:]


def fresh():
    torch.manual_seed(0)
    return TutorialMLP()


def trained():
    """CFG attached to a fresh model, every add-in weight moved off its init."""
    att = studio.attach(fresh(), CFG, example_input=X)
    with torch.no_grad():
        for p in att.parameters():
            p.add_(0.1)
    return att


@pytest.fixture
def saved(tmp_path):
    att = trained()
    path = tmp_path / "a.safetensors"
    att.save(path)
    att.detach()
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    return path, tensors, meta


def craft(path, tensors, meta):
    out = path.with_name("crafted.safetensors")
    save_file(tensors, str(out), metadata=meta)
    return out


def refuse(path, words, error=ValueError, **kwargs):
    model = fresh()
    snap = snapshot(model)
    with pytest.raises(error) as e:
        studio.load(model, path, example_input=X, **kwargs)
    assert_untouched(model, snap)
    message = str(e.value)
    assert str(path) in message
    for w in words:
        assert w in message, message
    return e.value


def test_the_original_loads(saved):
    path, _, _ = saved
    model = fresh()
    with studio.load(model, path, example_input=X) as att:
        assert [k for k, _, _ in att.entries] == ["LoRA_fc1"]


TENSOR_CASES = {
    "extra base weight": (
        lambda t: {**t, "base.fc2.weight": torch.zeros(256, 256)},
        ["'base.fc2.weight'", "does not keep trainable"],
    ),
    "extra add-in key": (
        lambda t: {**t, "addins.LoRA_fc9.lora_A": torch.zeros(2, 64)},
        ["'addins.LoRA_fc9.lora_A'", "no add-in"],
    ),
    "stray key": (lambda t: {**t, "fc1.weight": torch.zeros(256, 64)}, ["'fc1.weight'"]),
    "int64": (
        lambda t: {**t, "addins.LoRA_fc1.lora_A": t["addins.LoRA_fc1.lora_A"].long()},
        ["'addins.LoRA_fc1.lora_A'", "torch.int64", "floating"],
    ),
    "bool": (lambda t: {**t, "base.fc3.bias": t["base.fc3.bias"] > 0}, ["'base.fc3.bias'", "torch.bool"]),
    "complex": (
        lambda t: {**t, "addins.LoRA_fc1.lora_B": t["addins.LoRA_fc1.lora_B"].to(torch.complex64)},
        ["'addins.LoRA_fc1.lora_B'", "complex64"],
    ),
    "nan": (
        lambda t: {**t, "addins.LoRA_fc1.lora_B": t["addins.LoRA_fc1.lora_B"] * float("nan")},
        ["'addins.LoRA_fc1.lora_B'", "non-finite"],
    ),
    "inf base": (
        lambda t: {**t, "base.fc3.weight": t["base.fc3.weight"] + float("inf")},
        ["'base.fc3.weight'", "non-finite"],
    ),
    "shape": (
        lambda t: {**t, "addins.LoRA_fc1.lora_A": torch.zeros(3, 64)},
        ["'addins.LoRA_fc1.lora_A'", "shape"],
    ),
    "base shape": (lambda t: {**t, "base.fc3.bias": torch.zeros(11)}, ["'base.fc3.bias'", "shape (11,)"]),
    "missing": (lambda t: {k: v for k, v in t.items() if not k.endswith("lora_B")}, ["LoRA_fc1", "expects"]),
}


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_crafted_tensors_are_refused(saved, case):
    path, tensors, meta = saved
    change, words = TENSOR_CASES[case]
    refuse(craft(path, change(dict(tensors)), meta), words)


def test_nonfinite_allowed_only_when_asked(saved):
    path, tensors, meta = saved
    bad = craft(path, {**tensors, "base.fc3.bias": tensors["base.fc3.bias"] * float("inf")}, meta)
    model = fresh()
    with studio.load(model, bad, example_input=X, allow_nonfinite=True):
        assert torch.isinf(model.fc3.bias).all()


META_CASES = {
    "keys not json": ("keys", "[", ["'keys'", "not valid JSON"]),
    "keys object": ("keys", json.dumps({"a": 1}), ["'keys'", "list of strings"]),
    "keys ints": ("keys", json.dumps([1, 2]), ["'keys'", "list of strings"]),
    "fingerprint list": ("fingerprint", json.dumps([]), ["'fingerprint'", "object"]),
    "fingerprint root": ("fingerprint", json.dumps({"root": 5, "params": []}), ["'fingerprint.root'"]),
    "fingerprint params": (
        "fingerprint",
        json.dumps({"root": "TutorialMLP", "params": "x"}),
        ["'fingerprint.params'", "list"],
    ),
    "fingerprint item": (
        "fingerprint",
        json.dumps({"root": "TutorialMLP", "params": [[1, 2]]}),
        ["'fingerprint.params[0]"],
    ),
    "fingerprint shape": (
        "fingerprint",
        json.dumps({"root": "TutorialMLP", "params": [["fc1.weight", "x"]]}),
        ["'fingerprint.params[0][1]'"],
    ),
}


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_malformed_metadata_is_one_value_error_naming_the_field(saved, case):
    path, tensors, meta = saved
    field, value, words = META_CASES[case]
    err = refuse(craft(path, tensors, {**meta, field: value}), words)
    assert type(err) is ValueError


@pytest.mark.parametrize(
    "config, words",
    [
        ("(LoRA.__init__): ...->(fc1){inout1}->...\ntrainable(fc3)", ["'config'", "not a hook method"]),
        (
            "(LoRA.adapt_output, alpha=1e309): ...->(fc1){inout1}->...\ntrainable(fc3)",
            ["'config'", "infinite"],
        ),
        ("(LoRA.adapt_output, r=" + "9" * 5000 + "): ...->(fc1){inout1}->...", ["'config'", "too long"]),
        ("(os.system): ...->(fc1){inout1}->...\ntrainable(fc3)", ["'config'", "unknown add-in 'os'"]),
    ],
)
def test_config_in_metadata_obeys_string_rules(saved, config, words):
    path, tensors, meta = saved
    err = refuse(craft(path, tensors, {**meta, "config": config}), words, error=studio.ConfigError)
    assert err.position is not None


def test_missing_config_field(saved):
    path, tensors, meta = saved
    refuse(craft(path, tensors, {k: v for k, v in meta.items() if k != "config"}), ["'config'"])


# -- PEFT directories -----------------------------------------------------------------------------
@pytest.fixture
def peft_dir(tmp_path):
    att = trained()
    att.export_peft(tmp_path / "peft")
    att.detach()
    d = tmp_path / "peft"
    return (
        d,
        json.loads((d / "adapter_config.json").read_text()),
        {k: v for k, v in _read(d / "adapter_model.safetensors").items()},
    )


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def write_peft(d, config, tensors):
    (d / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})


def refuse_peft(d, words, **kwargs):
    model = fresh()
    snap = snapshot(model)
    start = time.process_time()  # CPU time: a busy machine slows the wall clock, not this
    with pytest.raises(ValueError) as e:
        studio.from_peft(model, d, example_input=X, **kwargs)
    assert time.process_time() - start < 10
    assert_untouched(model, snap)
    assert type(e.value) is ValueError
    message = str(e.value)
    assert str(d) in message
    for w in words:
        assert w in message, message


def test_modules_to_save_loads_only_when_allowed(peft_dir):
    d, config, tensors = peft_dir
    assert config["modules_to_save"] == ["fc3"]
    refuse_peft(d, ["overwrites base module 'fc3'", "modules_to_save=True"])
    model = fresh()
    with studio.from_peft(model, d, example_input=X, modules_to_save=["fc3"]) as att:
        assert att.config.trainable == ("fc3.bias", "fc3.weight")
    with pytest.raises(ValueError, match="does not list 'fc2'"):
        studio.from_peft(fresh(), d, example_input=X, modules_to_save=["fc2"])


def test_modules_to_save_naming_a_frozen_layer_is_refused(peft_dir):
    d, config, tensors = peft_dir
    w = torch.zeros(256, 256)
    write_peft(
        d,
        {**config, "modules_to_save": ["fc3", "fc2"]},
        {**tensors, "base_model.model.fc2.modules_to_save.default.weight": w},
    )
    refuse_peft(d, ["overwrites base module 'fc2'"], modules_to_save=["fc3"])


def test_unlisted_extra_tensor_is_refused(peft_dir):
    d, config, tensors = peft_dir
    write_peft(d, config, {**tensors, "base_model.model.fc2.weight": torch.zeros(256, 256)})
    refuse_peft(d, ["'base_model.model.fc2.weight'", "refusing"], modules_to_save=True)


PEFT_FIELDS = {
    "not an object": (lambda c: [c], ["JSON object"]),
    "r string": (lambda c: {**c, "r": "8"}, ["'r'"]),
    "alpha string": (lambda c: {**c, "lora_alpha": "16"}, ["'lora_alpha'", "finite number"]),
    "alpha infinite": (lambda c: {**c, "lora_alpha": float("inf")}, ["'lora_alpha'", "finite number"]),
    "dropout range": (lambda c: {**c, "lora_dropout": 1.5}, ["'lora_dropout'"]),
    "modules_to_save string": (
        lambda c: {**c, "modules_to_save": "fc3"},
        ["'modules_to_save'", "list of strings"],
    ),
    "rank_pattern list": (lambda c: {**c, "rank_pattern": []}, ["'rank_pattern'", "object"]),
    "alpha_pattern value": (
        lambda c: {**c, "alpha_pattern": {"fc1": "x"}},
        ["alpha_pattern", "finite number"],
    ),
    "alpha_pattern bool": (lambda c: {**c, "alpha_pattern": {"fc1": True}}, ["alpha_pattern"]),
    "catastrophic key": (
        lambda c: {**c, "alpha_pattern": {"(.*.*.*.*.*.*.*.*.*.*.*.*)*x": 2}},
        ["'alpha_pattern'", "uses '('"],
    ),
    "long key": (lambda c: {**c, "rank_pattern": {"a" * 5000: 2}}, ["'rank_pattern'", "5000 characters"]),
    "peft_type int": (lambda c: {**c, "peft_type": 3}, ["'peft_type'"]),
    "use_dora string": (lambda c: {**c, "use_dora": "yes"}, ["'use_dora'"]),
}


@pytest.mark.parametrize("case", sorted(PEFT_FIELDS))
def test_malformed_peft_config_fields(peft_dir, case):
    d, config, tensors = peft_dir
    change, words = PEFT_FIELDS[case]
    write_peft(d, change(dict(config)), tensors)
    refuse_peft(d, words, modules_to_save=True)


PEFT_TENSORS = {
    "int lora_A": (
        lambda t: {**t, "base_model.model.fc1.lora_A.weight": t["base_model.model.fc1.lora_A.weight"].long()},
        ["lora_A", "torch.int64"],
    ),
    "nan lora_B": (
        lambda t: {
            **t,
            "base_model.model.fc1.lora_B.weight": t["base_model.model.fc1.lora_B.weight"] * float("nan"),
        },
        ["lora_B", "non-finite"],
    ),
    "scalar lora_A": (
        lambda t: {**t, "base_model.model.fc1.lora_A.weight": torch.tensor(1.0)},
        ["lora_A", "non-empty matrices"],
    ),
    "complex saved": (
        lambda t: {
            **t,
            "base_model.model.fc3.modules_to_save.default.bias": torch.zeros(10, dtype=torch.complex64),
        },
        ["fc3", "complex64"],
    ),
}


@pytest.mark.parametrize("case", sorted(PEFT_TENSORS))
def test_crafted_peft_tensors(peft_dir, case):
    d, config, tensors = peft_dir
    change, words = PEFT_TENSORS[case]
    write_peft(d, config, change(dict(tensors)))
    refuse_peft(d, words, modules_to_save=True)


def test_safe_pattern_keys_still_match(peft_dir):
    d, config, tensors = peft_dir
    write_peft(d, {**config, "alpha_pattern": {"^fc1$": 8}, "rank_pattern": {".*fc1": 2}}, tensors)
    with studio.from_peft(fresh(), d, example_input=X, modules_to_save=True) as att:
        assert att.entries[0][2].alpha == 8
