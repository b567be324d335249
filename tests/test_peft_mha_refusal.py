"""PEFT's ``nn.MultiheadAttention`` LoRA, by the installed PEFT version.

- PEFT < 0.22 applies out_proj's update twice (huggingface/peft PR #3774): its files are refused by their
  ``peft_version`` (``lora_peft.MHA_REFUSAL``), and the test below shows the bug.
- PEFT >= 0.22 computes ``W + scale * B @ A`` on in_proj and on out_proj in its forward and merge, but its
  backward runs after it unmerged (``weight.data -= delta``), so its input and in_proj gradients are those
  of ``W``. Ours equal PEFT 0.22 in outputs and merged weights and the math (``peft_compare.math_grads``)
  in gradients; ``from_peft`` / ``export_peft`` carry MHA LoRA both ways.
"""

from __future__ import annotations

import copy
import json
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import addin_studio as studio
from addin_studio.addins.lora_peft import MHA_REFUSAL
from peft_compare import from_peft_refusal, math_grads, peft_mha_fixed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft")
fixed = pytest.mark.skipif(
    not peft_mha_fixed(), reason=f"PEFT {peft.__version__} adds out_proj's update twice"
)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2)

    def forward(self, x):
        return self.mha(x, x, x)[0]


X = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(2))


def _base() -> Attention:
    torch.manual_seed(0)
    return Attention().eval()


def _peft_model(base: nn.Module):
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules=["mha"], r=2, lora_alpha=4))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(n)))
    return pm.eval()


def _deltas(pm) -> tuple[torch.Tensor, torch.Tensor]:
    mha = pm.base_model.model.mha
    out_proj = mha.base_layer.out_proj
    d_in = (mha.lora_B["default"].weight @ mha.lora_A["default"].weight) * mha.scaling["default"]
    d_out = (out_proj.lora_B["default"].weight @ out_proj.lora_A["default"].weight) * out_proj.scaling[
        "default"
    ]
    return d_in.detach(), d_out.detach()


def _reference(base: nn.Module, d_in: torch.Tensor, d_out: torch.Tensor) -> nn.Module:
    ref = copy.deepcopy(base)
    with torch.no_grad():
        ref.mha.in_proj_weight.add_(d_in)
        ref.mha.out_proj.weight.add_(d_out)
    return ref


@pytest.mark.skipif(peft_mha_fixed(), reason=f"PEFT {peft.__version__} applies out_proj's update once")
def test_peft_mha_lora_adds_the_out_proj_update_twice():
    base = _base()
    pm = _peft_model(base)
    d_in, d_out = _deltas(pm)
    theirs = pm(X)
    torch.testing.assert_close(theirs, _reference(base, d_in, 2 * d_out)(X), rtol=1e-5, atol=1e-5)
    assert (theirs - _reference(base, d_in, d_out)(X)).abs().max() > 1e-2


def _ours(base: nn.Module, pm):
    """Our LoRA on a copy of ``base`` with PEFT's factors: (model, attachment)."""
    model = copy.deepcopy(base)
    att = studio.attach(model, studio.strategies.lora(model, ["mha"], r=2, alpha=4))
    mha = pm.base_model.model.mha
    theirs = {"mha": mha, "mha.out_proj": mha.base_layer.out_proj}
    with torch.no_grad():
        for _, p, addin in att.entries:
            addin.lora_A.copy_(theirs[p.target.module].lora_A["default"].weight)
            addin.lora_B.copy_(theirs[p.target.module].lora_B["default"].weight)
    return model, att


@fixed
def test_peft_022_mha_forward_and_merge_are_right_its_gradients_are_not():
    """Measured on nn.MultiheadAttention(8, 2), r=2, alpha=4, lora_B ~ N(0, 0.5): PEFT's forward and merged
    weights equal W + scale*B@A on both projections; its out_proj gradients equal the math, its input and
    in_proj gradients do not (largest differences printed; about the size of the gradients themselves)."""
    base = _base()
    pm = _peft_model(base)
    d_in, d_out = _deltas(pm)
    x = X.clone().requires_grad_()
    out = pm(x)
    torch.testing.assert_close(out, _reference(base, d_in, d_out)(X), rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    _, att = _ours(base, pm)
    expected, x_grad = math_grads(base, att, X)
    mha = pm.base_model.model.mha
    theirs = {
        ("mha", "lora_A"): mha.lora_A["default"].weight,
        ("mha", "lora_B"): mha.lora_B["default"].weight,
        ("mha.out_proj", "lora_A"): mha.base_layer.out_proj.lora_A["default"].weight,
        ("mha.out_proj", "lora_B"): mha.base_layer.out_proj.lora_B["default"].weight,
    }
    off = {k: float((p.grad - expected[k]).abs().max()) for k, p in theirs.items()}
    off["input"] = float((x.grad - x_grad).abs().max())
    size = {**{k: float(g.abs().max()) for k, g in expected.items()}, "input": float(x_grad.abs().max())}
    print({str(k): f"{off[k]:.2f} of {size[k]:.2f}" for k in off})
    assert off[("mha.out_proj", "lora_A")] < 1e-5 and off[("mha.out_proj", "lora_B")] < 1e-5
    assert off["input"] > 0.3 * size["input"] and off[("mha", "lora_A")] > 0.3 * size[("mha", "lora_A")]
    merged = pm.merge_and_unload().state_dict()
    ref = _reference(base, d_in, d_out).state_dict()
    for name, value in ref.items():
        torch.testing.assert_close(merged[name], value, rtol=1e-5, atol=1e-6)


@fixed
def test_our_mha_lora_equals_peft_022_outputs_and_merged_weights_and_the_math_in_gradients():
    base = _base()
    pm = _peft_model(base)
    model, att = _ours(base, pm)
    assert [(p.method, p.target.module) for p in att.config.placements] == [
        ("adapt_weight", "mha"),
        ("adapt_weight", "mha.out_proj"),
    ]
    x = X.clone().requires_grad_()
    out = model(x)
    torch.testing.assert_close(out, pm(X), rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    expected, x_grad = math_grads(base, att, X)
    torch.testing.assert_close(x.grad, x_grad, rtol=1e-5, atol=1e-6)
    for _, p, addin in att.entries:
        for part in ("lora_A", "lora_B"):
            torch.testing.assert_close(
                getattr(addin, part).grad, expected[(p.target.module, part)], rtol=1e-5, atol=1e-5
            )
    with torch.no_grad():
        att.merge()
        merged = pm.merge_and_unload().state_dict()
        for name, value in merged.items():
            torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-5, atol=1e-6)


@fixed
def test_mha_lora_goes_from_peft_and_back_to_peft(tmp_path):
    base = _base()
    pm = _peft_model(base)
    pm.save_pretrained(str(tmp_path / "theirs"))
    theirs = load_file(str(tmp_path / "theirs" / "adapter_model.safetensors"))
    assert sorted(theirs) == [
        "base_model.model.mha.base_layer.out_proj.lora_A.weight",
        "base_model.model.mha.base_layer.out_proj.lora_B.weight",
        "base_model.model.mha.lora_A.weight",
        "base_model.model.mha.lora_B.weight",
    ]
    model = copy.deepcopy(base)
    att = studio.from_peft(model, tmp_path / "theirs")
    assert str(att.config) == (
        "(LoRA.adapt_weight, alpha=4, r=2): ...->(mha){inout1}->...\n"
        "(LoRA.adapt_weight, alpha=4, r=2): ...->(mha.out_proj){inout1}->..."
    )
    torch.testing.assert_close(model(X), pm(X), rtol=1e-5, atol=1e-6)
    att.export_peft(tmp_path / "ours")
    ours = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    assert sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], t) for k, t in theirs.items())
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert (config["target_modules"], config["r"], config["lora_alpha"], config["peft_version"]) == (
        ["mha"],
        2,
        4,
        "0.22.0",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "saved with PEFT < 0.22 ... doubled" warning
        back = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(back(X), model(X), rtol=1e-5, atol=1e-6)


def test_export_needs_both_projections_with_one_rank(tmp_path):
    model = _base()
    one = {
        "mha": "(LoRA.adapt_weight, r=2): ...->(mha){inout1}->...",
        "mha.out_proj": "(LoRA.adapt_weight, r=2): ...->(mha.out_proj){inout1}->...",
    }
    with studio.attach(model, one["mha"]) as att, pytest.raises(ValueError) as info:
        att.export_peft(tmp_path)
    assert str(info.value) == (
        "PEFT's nn.MultiheadAttention LoRA adapts in_proj and out_proj together; "
        "'mha' has a LoRA but its out_proj 'mha.out_proj' has none: attach "
        "LoRA.adapt_weight on 'mha.out_proj' too (same r and alpha)"
    )
    with studio.attach(model, one["mha.out_proj"]) as att, pytest.raises(ValueError) as info:
        att.export_peft(tmp_path)
    assert str(info.value) == (
        "PEFT's nn.MultiheadAttention LoRA adapts in_proj and out_proj together; "
        "'mha.out_proj' has a LoRA but its MultiheadAttention 'mha' has none: attach "
        "LoRA.adapt_weight on 'mha' too (same r and alpha)"
    )
    with (
        studio.attach(model, one["mha"] + "\n" + one["mha.out_proj"].replace("r=2", "r=3")) as att,
        pytest.raises(ValueError) as info,
    ):
        att.export_peft(tmp_path)
    assert str(info.value) == (
        "PEFT gives an nn.MultiheadAttention's in_proj and out_proj one r and alpha; "
        "'mha' has r=2, alpha=2, 'mha.out_proj' r=3, alpha=3"
    )
    assert not (tmp_path / "adapter_config.json").exists()


def _saved(tmp_path, version: str | None, drop: str | None = None):
    """PEFT's saved MHA adapter, its config's peft_version set to ``version`` (None: removed) and the
    tensors whose names contain ``drop`` removed."""
    pm = _peft_model(_base())
    pm.save_pretrained(str(tmp_path))
    path = tmp_path / "adapter_config.json"
    config = json.loads(path.read_text())
    config.pop("peft_version")
    if version is not None:
        config["peft_version"] = version
    path.write_text(json.dumps(config))
    if drop:
        weights = tmp_path / "adapter_model.safetensors"
        save_file({k: v for k, v in load_file(str(weights)).items() if drop not in k}, str(weights))
    return pm


@pytest.mark.parametrize(
    "version, saved",
    [
        ("0.21.2", "PEFT 0.21.2"),
        ("0.21.0.dev0@abc", "PEFT 0.21.0.dev0@abc"),
        (None, "a PEFT before 0.18 (its config has no peft_version)"),
    ],
)
def test_a_file_saved_before_peft_022_is_refused_naming_its_version(tmp_path, version, saved):
    _saved(tmp_path, version)
    message = from_peft_refusal(_base(), tmp_path)
    assert message == (
        f"{tmp_path}: from_peft does not import this nn.MultiheadAttention LoRA (the "
        f"adapter's 'mha', saved by {saved}): {MHA_REFUSAL}"
    )


@pytest.mark.parametrize("version", ["0.22.0", "0.22.1", "0.21.1.dev0@abc", "1.0.0"])
def test_a_file_from_peft_022_on_imports(tmp_path, version):
    _saved(tmp_path, version)
    assert len(studio.from_peft(_base(), tmp_path).entries) == 2


@fixed
def test_peft_022_resaves_an_old_file_which_then_imports(tmp_path):
    """MHA_REFUSAL's advice works: PEFT 0.22 loads a 0.21 file with out_proj's lora_B doubled (keeping its
    outputs) and saves it with its own version."""
    _saved(tmp_path / "old", "0.21.2")
    base = _base()
    with pytest.warns(UserWarning, match="saved with PEFT < 0.22.0"):
        pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "old")).eval()
    pm.save_pretrained(str(tmp_path / "new"))
    model = copy.deepcopy(base)
    studio.from_peft(model, tmp_path / "new")
    torch.testing.assert_close(model(X), pm(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "drop, part, path",
    [(".out_proj.", "out_proj", "mha.base_layer.out_proj"), ("mha.lora_", "in_proj", "mha")],
)
def test_a_file_with_one_projection_is_refused_naming_the_missing_one(tmp_path, drop, part, path):
    _saved(tmp_path, "0.22.0", drop=drop)
    message = from_peft_refusal(_base(), tmp_path)
    assert message == (
        f"{tmp_path}: the adapter's nn.MultiheadAttention LoRA for 'mha' lacks its {part} "
        f"tensors ('base_model.model.{path}.lora_A.weight', "
        f"'base_model.model.{path}.lora_B.weight'); PEFT adapts both projections"
    )
