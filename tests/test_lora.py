"""LoRA add-in: identity at attach, the exact update on Linear/Conv layers, merge/unmerge, training,
errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import addin_studio as studio
from addin_studio.addins.lora import lora_shape


def _lora(path: str, **settings) -> str:
    extra = "".join(f", {k}={v}" for k, v in settings.items())
    return f"(LoRA.adapt_output{extra}): ...->({path}){{inout1}}->..."


def _randomize(att) -> None:
    torch.manual_seed(123)
    with torch.no_grad():
        for p in att.addins.parameters():
            p.normal_(0, 0.1)


class Convs(nn.Module):
    """One of each layer LoRA supports, with awkward conv options."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 6, 3, padding=2, dilation=2)
        self.c2 = nn.Conv2d(6, 8, (3, 2), stride=2, padding=1, groups=2, padding_mode="reflect")
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.c3 = nn.Conv3d(8, 4, (2, 3, 3), padding=(0, 1, 1))
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)  # [b, 6, L]
        y = y.view(y.shape[0], 6, 4, -1)  # [b, 6, 4, L/4]
        y = self.dw(self.c2(y))  # [b, 8, h, w]
        y = self.c3(torch.stack([y, y.flip(1)], 2))
        return self.fc(y.mean((2, 3, 4)))


CONV_CFG = "\n".join(_lora(p, r=2, alpha=3) for p in ("c1", "c2", "dw", "c3", "fc"))


def test_identity_at_attach_and_exact_update_on_every_layer_kind():
    torch.manual_seed(0)
    model = Convs()
    x = torch.randn(2, 3, 32)
    before = model(x)
    att = studio.attach(model, CONV_CFG, example_input=x)
    assert torch.equal(model(x), before)
    _randomize(att)
    modules = dict(model.named_modules())
    # each layer's output must equal the layer run with W + (alpha/r) * reshape(B @ A)
    for key, placement, addin in att.entries:
        layer = modules[placement.target.module]
        h, w = lora_shape(layer)
        assert addin.lora_B.shape == (h, 2) and addin.lora_A.shape == (2, w)
        delta = (addin.lora_B @ addin.lora_A).reshape(layer.weight.shape) * 1.5
        inp = (
            torch.randn(
                2, layer.weight.shape[1] * getattr(layer, "groups", 1), *([9] * (layer.weight.dim() - 2))
            )
            if layer.weight.dim() > 2
            else torch.randn(3, 4)
        )
        got = layer(inp)
        if isinstance(layer, nn.Linear):
            want = F.linear(inp, layer.weight + delta, layer.bias)
        else:
            want = layer._conv_forward(inp, layer.weight + delta, layer.bias)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    att.detach()
    assert torch.equal(model(x), before)


def test_balanced_factorization_shapes():
    assert lora_shape(nn.Linear(10, 7)) == (7, 10)
    assert lora_shape(nn.Conv1d(4, 6, 5)) == (6, 4 * 5)
    assert lora_shape(nn.Conv2d(4, 6, (3, 5))) == (6 * 3, 4 * 5)
    assert lora_shape(nn.Conv2d(8, 6, 3, groups=2)) == (6 * 3, 4 * 3)
    assert lora_shape(nn.Conv2d(8, 8, 3, groups=8)) == (8 * 3, 1 * 3)
    assert lora_shape(nn.Conv3d(4, 6, (2, 3, 5))) == (6 * 2, 4 * 3 * 5)


def test_linear_update_formula_with_alpha_and_default_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4))
    x = torch.randn(5, 6)
    att = studio.attach(model, _lora("0", r=3, alpha=12))
    lora = att.addins["LoRA_0"]
    assert lora.scaling == 4.0
    _randomize(att)
    base = F.linear(x, model[0].weight, model[0].bias)
    torch.testing.assert_close(model(x), base + 4.0 * (x @ lora.lora_A.T) @ lora.lora_B.T)
    att.detach()
    att = studio.attach(model, _lora("0", r=3))
    assert att.addins["LoRA_0"].scaling == 1.0  # GIFt's default: alpha = r


def test_kaiming_a_and_zero_b_init():
    torch.manual_seed(0)
    att = studio.attach(nn.Sequential(nn.Linear(400, 300)), _lora("0", r=16))
    lora = att.addins["LoRA_0"]
    assert torch.count_nonzero(lora.lora_B) == 0
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) bound for fan_in 400
    assert lora.lora_A.abs().max() <= bound and lora.lora_A.abs().max() > 0.9 * bound


def test_trainable_count_is_rank_times_h_plus_w():
    torch.manual_seed(0)
    model = Convs()
    att = studio.attach(model, CONV_CFG, example_input=torch.randn(1, 3, 32))
    expected = 0
    for path in ("c1", "c2", "dw", "c3", "fc"):
        w = dict(model.named_modules())[path].weight
        out, in_g, *k = w.shape
        if len(k) == 0:  # Linear
            h, ww = out, in_g
        elif len(k) == 1:  # Conv1d
            h, ww = out, in_g * k[0]
        else:
            h, ww = out * k[0], in_g * math.prod(k[1:])
        expected += 2 * (h + ww)
    trainable, total = studio.count_parameters(model)
    assert trainable == expected
    assert total == expected + sum(p.numel() for n, p in model.named_parameters() if "addins" not in n)
    att.detach()


def test_training_step_changes_only_lora_parameters():
    torch.manual_seed(0)
    model = Convs()
    x = torch.randn(4, 3, 32)
    att = studio.attach(model, CONV_CFG + "\ntrainable(fc.bias)", example_input=x)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # B starts at zero, so A only moves from the second step on
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    lora_names = {n for n, _ in model.named_parameters() if n.startswith("addins.")}
    assert changed == lora_names | {"fc.bias"}
    att.detach()


def test_merge_folds_the_update_and_unmerge_restores_bits():
    torch.manual_seed(0)
    model = Convs()
    x = torch.randn(2, 3, 32)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    att = studio.attach(model, CONV_CFG, example_input=x)
    _randomize(att)
    hooked = model(x)
    att.merge()
    assert att.merged
    assert all(not m._forward_hooks for m in model.modules())  # zero extra cost once merged
    torch.testing.assert_close(model(x), hooked, rtol=1e-4, atol=1e-5)
    assert not torch.equal(model.c2.weight, base_state["c2.weight"])
    att.unmerge()
    assert not att.merged
    assert all(
        torch.equal(getattr(model, n.split(".")[0]).state_dict()[n.split(".", 1)[1]], v)
        for n, v in base_state.items()
    )
    assert torch.equal(model(x), hooked)
    att.merge()
    att.detach()  # detach while merged restores the base weights too
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base_state.items())
    assert set(model.state_dict()) == set(base_state)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    x = torch.randn(16, 8)
    att = studio.attach(model, _lora("0", r=4, dropout=0.5))
    _randomize(att)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.equal(a, model(x))


@pytest.mark.parametrize("builder", ["vit", "convnet"])
def test_identity_at_init_on_timm_models(builder):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    if builder == "vit":
        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5
        ).eval()
        cfg = studio.strategies.lora(model, targets=["qkv", "fc1"], r=4)
    else:
        model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=5).eval()
        cfg = studio.strategies.lora_all(model, r=2)
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    with studio.attach(model, cfg, example_input=x) as att:
        assert len(att.entries) > 5
        assert torch.equal(model(x), before)
    assert torch.equal(model(x), before)


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            _lora("1"),
            "LoRA works on nn.Linear, nn.Conv1d/2d/3d, nn.Embedding, nn.MultiheadAttention and "
            "transformers Conv1D layers (or a named parameter with param=), not ReLU",
        ),
        ("(LoRA.adapt_input): ...->{inout1}(0)->...", "LoRA goes after its layer"),
        (_lora("0", r=0), "rank r must be a positive integer, got 0"),
        (_lora("0", dropout=1.5), "dropout must be a number in [0, 1)"),
        (_lora("0", rank=2), "LoRA does not take a setting 'rank'"),
        ("(LoRA.adapt_across_output): ...->{in1}(0)->...->(0){out1}->...", "takes no separate {in} point"),
    ],
)
def test_bad_placements_are_clear_errors_and_leave_the_model_untouched(text, needle):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(studio.ConfigError) as info:
        studio.attach(model, text)
    assert needle in str(info.value)
    assert info.value.position is not None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not hasattr(model, "addins")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_multihead_attention_output_hooks_are_refused_and_point_at_adapt_weight():
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    for path, needle in [
        ("0.out_proj", "reads its weight without calling it"),
        ("0", "computes with in_proj_weight"),
    ]:
        with pytest.raises(studio.ConfigError) as info:
            studio.attach(model, f"(LoRA.adapt_output): ...->({path}){{inout1}}->...")
        assert needle in str(info.value) and "use adapt_weight" in str(info.value)
        assert not hasattr(model, "addins") and all(p.requires_grad for p in model.parameters())
