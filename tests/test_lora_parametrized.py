"""LoRA on parametrized weights (``torch.nn.utils.parametrize``: weight_norm, spectral_norm, any other; and
the legacy ``torch.nn.utils.weight_norm`` hook).

LoRA adapts the weight the layer computes with (the parametrization's value), leaves the parametrization
registered, merges through its ``right_inverse`` only where that gives the merged weight back (weight_norm:
yes; spectral_norm: no, refused by name) and detaches bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import addin_studio as studio
from zoo_check import tiny_wav2vec2

LAYERS = {
    "linear": (lambda: nn.Linear(6, 8), (2, 6)),
    "conv1d": (lambda: nn.Conv1d(4, 8, 3, padding=1), (2, 4, 7)),
    "conv2d": (lambda: nn.Conv2d(4, 8, 3, padding=1), (2, 4, 5, 5)),
}
NORMS = {"weight_norm": parametrizations.weight_norm, "spectral_norm": parametrizations.spectral_norm}


def _build(norm: str, kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    layer, shape = LAYERS[kind]
    model = nn.Sequential(NORMS[norm](layer()), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    model(x)  # materialize the LazyLinear
    return model.eval(), x


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _config(method: str, extra: str = "") -> str:
    return f"(LoRA.{method}, r=2{extra}): ...->([0]){{inout1}}->..."


@pytest.mark.parametrize("method", ["adapt_output", "adapt_weight"])
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("norm", list(NORMS))
def test_lora_on_a_parametrized_layer_end_to_end(norm, kind, method):
    model, x = _build(norm, kind)
    cls = type(model[0])
    state = _state(model)
    with torch.no_grad():
        bare = model(x)
    att = studio.attach(model, _config(method), example_input=x)
    lora = att.addins["LoRA_0"]
    assert parametrize.is_parametrized(model[0], "weight")
    with torch.no_grad():  # 1. identity at init
        assert torch.equal(model(x), bare)
    # 2. one step moves the LoRA and no base tensor (the parametrization's originals included)
    before = {n: p.detach().clone() for n, p in lora.named_parameters()}
    opt = torch.optim.SGD(att.parameters(), lr=0.1)
    model(x).square().mean().backward()
    opt.step()
    assert not torch.equal(before["lora_B"], lora.lora_B)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items() if not k.startswith("addins."))
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("addins."))
    with torch.no_grad():
        lora.lora_B.normal_(0, 0.3)
        unmerged = model(x)
        assert (unmerged - bare).abs().max() > 1e-2
        # 3. merge: through weight_norm's right_inverse (g = ||W'||, v = W'), exact within rounding;
        # spectral_norm's right_inverse is no inverse, so the merge is refused and nothing changes
        if norm == "weight_norm":
            att.merge()
            assert att.merged and (model(x) - unmerged).abs().max() <= 1e-5
            assert not model[0]._forward_hooks and type(model[0]) is cls  # the LoRA is folded in
            att.unmerge()
        else:
            with pytest.raises(ValueError) as err:
                att.merge()
            assert str(err.value).startswith(
                "cannot merge LoRA_0 into '0': 'weight' is computed by _SpectralNorm from "
                "parametrizations.weight.original, and its right_inverse does not give the merged weight "
                "back (off by "
            )
            assert str(err.value).endswith(
                "so the update cannot be folded into them exactly; keep it "
                "unmerged (the parametrization stays as it was)"
            )
            assert not att.merged
        assert torch.equal(model(x), unmerged)  # 4. unmerge (or the refusal) exact
    att.detach()
    assert type(model[0]) is cls and parametrize.is_parametrized(model[0], "weight")
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), bare)


def test_weight_norm_merge_writes_the_originals_through_right_inverse():
    model, x = _build("weight_norm", "linear")
    att = studio.attach(model, _config("adapt_output"), example_input=x)
    with torch.no_grad():
        att.addins["LoRA_0"].lora_B.normal_(0, 0.3)
        expected = model[0].parametrizations.weight() + att.addins["LoRA_0"].delta()
        att.merge()
    g, v = model[0].parametrizations.weight.original0, model[0].parametrizations.weight.original1
    assert torch.allclose(v, expected) and torch.allclose(g, expected.norm(dim=1, keepdim=True))
    assert not g.requires_grad and not v.requires_grad
    att.detach()
    assert g.requires_grad and v.requires_grad


def test_spectral_norm_in_training_mode_moves_its_buffers_as_the_bare_model_does():
    # spectral_norm's power iteration updates _u/_v in every training forward, with or without LoRA: the
    # attached model's buffers follow the bare model's exactly (LoRA leaves the original untouched), and
    # detach gives the state of a bare copy that ran the same forwards
    model, x = _build("spectral_norm", "conv1d")
    model.train()
    twin = copy.deepcopy(model)
    att = studio.attach(model, _config("adapt_output"), example_input=x)
    for _ in range(3):
        model(x)
        twin(x)
    sn = model[0].parametrizations.weight[0]
    assert torch.equal(sn._u, twin[0].parametrizations.weight[0]._u)
    att.detach()
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in model.state_dict().items())


def test_spectral_norm_merge_refusal_in_training_mode_leaves_the_power_iteration_buffers():
    model, x = _build("spectral_norm", "linear")
    model.train()
    att = studio.attach(model, _config("adapt_weight"), example_input=x)
    with torch.no_grad():
        att.addins["LoRA_0"].lora_B.normal_(0, 0.3)
    state = _state(model)
    with pytest.raises(ValueError, match="computed by _SpectralNorm"):
        att.merge()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    att.detach()


class _Tanh(nn.Module):  # a parametrization without right_inverse
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(w)


def test_merge_into_a_parametrization_without_right_inverse_is_refused():
    model = nn.Sequential(nn.Linear(4, 4))
    parametrize.register_parametrization(model[0], "weight", _Tanh())
    x = torch.randn(2, 4)
    att = studio.attach(model, _config("adapt_output"), example_input=x)
    with torch.no_grad():
        att.addins["LoRA_0"].lora_B.normal_(0, 0.3)
        out = model(x)
    state = _state(model)
    with pytest.raises(ValueError) as err:
        att.merge()
    assert str(err.value) == (
        "cannot merge LoRA_0 into '0': 'weight' is computed by _Tanh, which cannot "
        "take a weight back (parametrization _Tanh does not implement right_inverse.)"
    )
    assert torch.equal(model(x), out) and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    att.detach()
    assert parametrize.is_parametrized(model[0], "weight")


def test_base_moving_inits_are_refused_on_a_parametrized_weight():
    model, x = _build("weight_norm", "linear")
    with pytest.raises(
        studio.ConfigError,
        match="init=pissa moves part of the weight out of the base layer, but '0.weight' is computed",
    ):
        studio.attach(model, _config("adapt_output", ", init=pissa"), example_input=x)
    assert parametrize.is_parametrized(model[0], "weight") and not hasattr(model, "addins")


def test_dora_on_weight_norm_merges_exactly():
    model, x = _build("weight_norm", "linear")
    state = _state(model)
    att = studio.attach(model, _config("adapt_output", ", dora=true"), example_input=x)
    with torch.no_grad():
        bare = model(x)  # DoRA's magnitude starts at the weight's norms: identity
        att.addins["LoRA_0"].lora_B.normal_(0, 0.3)
        unmerged = model(x)
        att.merge()
        assert (model(x) - unmerged).abs().max() <= 1e-5
    att.detach()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), bare)


def test_legacy_weight_norm_output_hook_merges_and_adapt_weight_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(torch.nn.utils.weight_norm(nn.Conv1d(4, 8, 3)))
    x = torch.randn(2, 4, 7)
    state = _state(model)
    bare = model(x).detach()
    with pytest.raises(
        studio.ConfigError,
        match="Conv1d.weight is recomputed before every forward by the legacy WeightNorm hook",
    ):
        studio.attach(model, _config("adapt_weight"), example_input=x)
    att = studio.attach(model, _config("adapt_output"), example_input=x)
    with torch.no_grad():
        assert torch.equal(model(x), bare)
        att.addins["LoRA_0"].lora_B.normal_(0, 0.3)
        unmerged = model(x)
        att.merge()
        assert (model(x) - unmerged).abs().max() <= 1e-5
        att.unmerge()
        assert torch.equal(model(x), unmerged)
    att.detach()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), bare)


@pytest.mark.parametrize("norm", list(NORMS))
def test_adapters_on_a_parametrized_layer_save_load_and_export_to_peft(norm, tmp_path):
    model, x = _build(norm, "conv1d")
    bare = copy.deepcopy(model)
    att = studio.attach(model, _config("adapt_output"), example_input=x)
    with torch.no_grad():
        att.addins["LoRA_0"].lora_B.normal_(0, 0.3)
        ours = model(x)
    att.save(tmp_path / "a.safetensors")
    att.export_peft(tmp_path / "peft")
    att.detach()
    again = studio.load(model, tmp_path / "a.safetensors")
    with torch.no_grad():
        assert torch.equal(model(x), ours)
    again.detach()
    back = copy.deepcopy(bare)
    imported = studio.from_peft(back, tmp_path / "peft")  # and back from PEFT's files
    with torch.no_grad():
        assert torch.equal(back(x), ours)
    imported.detach()
    peft = pytest.importorskip("peft")
    theirs = peft.PeftModel.from_pretrained(bare, str(tmp_path / "peft")).eval()
    with torch.no_grad():
        assert torch.allclose(theirs(x), ours, atol=1e-6)


def test_wav2vec2_positional_conv_under_weight_norm_gets_a_lora():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = tiny_wav2vec2().eval()
    x = {"input_values": torch.randn(1, 800, generator=torch.Generator().manual_seed(1))}
    conv = model.wav2vec2.encoder.pos_conv_embed.conv
    assert parametrize.is_parametrized(conv, "weight")
    cfg_lora = studio.strategies.lora_all(model, r=4, example_input=x)
    targets = {p.target.module for p in cfg_lora.placements}
    assert "wav2vec2.encoder.pos_conv_embed.conv" in targets
    state = _state(model)
    with torch.no_grad():
        bare = model(**x).logits
    att = studio.attach(model, cfg_lora, example_input=x)
    key = next(k for k, p, _ in att.entries if p.target.module == "wav2vec2.encoder.pos_conv_embed.conv")
    model(**x).logits.square().mean().backward()
    assert att.addins[key].lora_B.grad is not None and att.addins[key].lora_B.grad.abs().sum() > 0  # (B = 0)
    att.detach()
    assert type(conv).__name__ == "ParametrizedConv1d" and parametrize.is_parametrized(conv, "weight")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(**x).logits, bare)


def test_lora_bias_is_not_merged_into_a_parametrized_bias():
    model = nn.Sequential(nn.Linear(4, 4))
    parametrize.register_parametrization(model[0], "bias", _Tanh())
    x = torch.randn(2, 4)
    att = studio.attach(model, _config("adapt_output", ", bias=true"), example_input=x)
    with pytest.raises(
        ValueError,
        match="cannot merge LoRA_0 into '0': LoRA bias=true cannot be merged: the "
        "layer's bias is computed by a parametrization",
    ):
        att.merge()
    att.detach()


@pytest.mark.parametrize("method", ["adapt_output", "adapt_weight"])
def test_fact_merges_through_weight_norm_and_is_refused_on_spectral_norm(method):
    for norm in NORMS:
        model, x = _build(norm, "linear")
        state = _state(model)
        att = studio.attach(
            model, f"(FacT_tt.{method}, r=2, width=2, dropout=0): ...->([0]){{inout1}}->...", example_input=x
        )
        with torch.no_grad():
            for p in att.parameters():
                p.normal_(0, 0.3)
            unmerged = model(x)
            if norm == "weight_norm":
                att.merge()
                assert (model(x) - unmerged).abs().max() <= 1e-5
                att.unmerge()
            else:
                refusal = "cannot merge FacT_tt_0 into '0': 'weight' is computed by _SpectralNorm"
                with pytest.raises(ValueError, match=refusal):
                    att.merge()
            assert torch.equal(model(x), unmerged)
        att.detach()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_legacy_spectral_norm_takes_the_output_hook_and_refuses_merge():
    torch.manual_seed(0)
    model = nn.Sequential(torch.nn.utils.spectral_norm(nn.Linear(6, 8))).eval()
    x = torch.randn(2, 6)
    state = _state(model)
    bare = model(x).detach()
    att = studio.attach(model, _config("adapt_output"), example_input=x)
    with torch.no_grad():
        assert torch.equal(model(x), bare)
        att.addins["LoRA_0"].lora_B.normal_(0, 0.3)
        unmerged = model(x)
    with pytest.raises(ValueError) as err:
        att.merge()
    assert str(err.value) == (
        "cannot merge LoRA_0 into '0': 'weight' is computed by the legacy SpectralNorm "
        "hook from weight_orig, which has no inverse to take a merged weight back"
    )
    assert torch.equal(model(x), unmerged)
    att.detach()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
