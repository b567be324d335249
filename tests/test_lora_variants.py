"""LoRA variants as settings of the built-in LoRA — rsLoRA, LoRA bias, inits (Gaussian, PiSSA, OLoRA),
DoRA — against Hugging Face PEFT on identical weights (outputs, gradients, merged weights, files both
ways), and their errors.

Tolerances: PEFT computes DoRA's LoRA weight as ``B(A(I))^T`` and we as ``B @ A``, so results agree to
float32 rounding (rtol 1e-5, atol 1e-6; gradients 1e-4/1e-5); PiSSA/OLoRA inits to 1e-4/1e-5.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from torch import nn

import addin_studio as studio
from peft_compare import compare, our_tensors, peft_tensors, perturb_peft

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft")


class MLP(nn.Module):
    """PEFT's custom-model MLP (tests/test_custom_models.py)."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.lin0 = nn.Linear(10, 20, bias=bias)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 2, bias=bias)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        return self.sm(self.lin1(self.drop(self.relu(self.lin0(x)))))


def _mlp(bias: bool = True) -> MLP:
    torch.manual_seed(0)
    return MLP(bias)


X = torch.randn(5, 10, generator=torch.Generator().manual_seed(7))
VARIANTS = {  # our settings -> PEFT's LoraConfig fields
    "rslora=true, alpha=6": {"use_rslora": True, "lora_alpha": 6},
    "bias=true, alpha=32": {"lora_bias": True, "lora_alpha": 32},
    "dora=true, alpha=8": {"use_dora": True, "lora_alpha": 8},
    "dora=true, alpha=32, rslora=true": {"use_dora": True, "lora_alpha": 32, "use_rslora": True},
    "init=gaussian, alpha=8": {"init_lora_weights": "gaussian", "lora_alpha": 8},
    "init=pissa, alpha=4": {"init_lora_weights": "pissa", "lora_alpha": 4},
    "init=olora, alpha=8": {"init_lora_weights": "olora", "lora_alpha": 8},
    "init=pissa, dora=true, alpha=8": {"init_lora_weights": "pissa", "use_dora": True, "lora_alpha": 8},
}


def _ours(settings: str, r: int = 2, targets=("lin0", "lin1")) -> str:
    return "\n".join(f"(LoRA.adapt_output, r={r}, {settings}): ...->({t}){{inout1}}->..." for t in targets)


@pytest.mark.parametrize("settings", list(VARIANTS))
def test_variant_equals_peft_on_linear(settings):
    config = peft.LoraConfig(r=2, target_modules=["lin0", "lin1"], **VARIANTS[settings])
    compare(_mlp, X, config, _ours(settings))


@pytest.mark.parametrize(
    "settings",
    [
        "rslora=true, alpha=6",
        "bias=true, alpha=32",
        "dora=true, alpha=8",
        "init=pissa, alpha=4",
        "init=olora, alpha=8",
    ],
)
def test_variant_files_both_ways(settings, tmp_path):
    # ours -> PEFT
    model = _mlp()
    att = studio.attach(model, _ours(settings))
    with torch.no_grad():
        for p in att.addins.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    expected = model(X)
    att.export_peft(tmp_path / "ours")
    fields = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    for key, value in VARIANTS[settings].items():
        assert fields[key] == value
    loaded = peft.PeftModel.from_pretrained(_mlp(), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(loaded(X), expected, rtol=1e-5, atol=1e-6)
    # PEFT -> ours
    pm = peft.get_peft_model(
        _mlp(), peft.LoraConfig(r=2, target_modules=["lin0", "lin1"], **VARIANTS[settings])
    )
    perturb_peft(pm)
    pm.eval()
    want = pm(X)
    pm.save_pretrained(str(tmp_path / "theirs"))
    fresh = _mlp().eval()
    back = studio.from_peft(fresh, tmp_path / "theirs")
    assert all(
        a.extra_repr().count(s.split("=")[0])
        for _, _, a in back.entries
        for s in settings.split(", ")
        if not s.startswith("alpha")
    )
    torch.testing.assert_close(fresh(X), want, rtol=1e-5, atol=1e-6)
    back.merge()
    torch.testing.assert_close(fresh(X), want, rtol=1e-4, atol=1e-5)


def test_rslora_scale():
    model = _mlp()
    att = studio.attach(model, "(LoRA.adapt_output, r=4, alpha=6, rslora=true): ...->(lin0){inout1}->...")
    assert att.addins[next(iter(att.addins))].scaling == 6 / 2  # alpha / sqrt(r)


def test_pissa_moves_the_base_and_detach_restores_it_bit_for_bit(tmp_path):
    model = _mlp().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_out = model(X)
    att = studio.attach(model, _ours("init=pissa", r=2))
    lora = our_tensors(att)
    residual = model.lin0.weight.detach().clone()
    assert not torch.equal(residual, before["lin0.weight"])  # the top singular part moved out
    delta = 2 / 2 * lora[("lin0", "lora_B")] @ lora[("lin0", "lora_A")]
    torch.testing.assert_close(residual + delta, before["lin0.weight"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(X), x_out, rtol=1e-5, atol=1e-6)  # same function at attach
    # a checkpoint loads on a fresh model (the residual is recomputed from its own base)
    with torch.no_grad():
        lora[("lin1", "lora_A")].add_(0.3)
    expected = model(X)
    att.save(tmp_path / "a.safetensors")
    att.merge()
    att.detach()  # detach while merged: unmerge, then put the moved part back
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    fresh = _mlp().eval()
    studio.load(fresh, tmp_path / "a.safetensors")
    torch.testing.assert_close(fresh(X), expected, rtol=1e-5, atol=1e-6)


def _conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())


def test_dora_weight_method_equals_output_hook():
    for make, x, layer in ((_mlp, X, "lin0"), (_conv, torch.randn(2, 3, 6, 6), "0")):
        outs = []
        for method in ("adapt_output", "adapt_weight"):
            model = make().eval()
            att = studio.attach(
                model, f"(LoRA.{method}, r=2, alpha=3, dora=true): ...->({layer}){{inout1}}->..."
            )
            torch.manual_seed(5)
            with torch.no_grad():
                for _, p in sorted(att.addins.named_parameters()):
                    p.copy_(torch.randn_like(p))
            out = model(x)
            out.square().sum().backward()
            grads = [p.grad.clone() for _, p in sorted(att.addins.named_parameters())]
            att.merge()
            outs.append((out.detach(), grads, model(x).detach()))
            att.detach()
        (o1, g1, m1), (o2, g2, m2) = outs
        torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m1, o1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m2, o2, rtol=1e-5, atol=1e-5)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_lora_bias_on_a_layer_without_bias_refuses_merge_and_changes_nothing():
    model = _mlp(bias=False).eval()
    att = studio.attach(model, _ours("bias=true", targets=("lin0", "lin1")))
    with torch.no_grad():
        for p in att.addins.parameters():
            p.add_(0.1)
    out = model(X)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"cannot merge .* into 'lin0': LoRA bias=true cannot be merged: "
        r"the layer has no bias to fold it into",
    ):
        att.merge()
    assert not att.merged
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(model(X), out)


@pytest.mark.parametrize(
    "settings, message",
    [
        ("dora=yes", "LoRA: setting 'dora' must be bool, got str 'yes'"),
        ("init=svd", "LoRA init must be one of kaiming, gaussian, pissa, olora, mica, got 'svd'"),
        ("bias=true, init=pissa", "LoRA bias=true needs the default init, not init=pissa"),
        ("bias=true, dora=true", "LoRA bias=true cannot be combined with dora=true"),
        (
            "r=3, init=pissa",
            r"LoRA init=pissa needs r <= 2 \(the smaller side of the \(2, 20\) weight\), got r=3",
        ),
    ],
)
def test_bad_variant_settings_are_clear_and_leave_the_model_untouched(settings, message):
    model = _mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(Exception, match=message):
        studio.attach(model, f"(LoRA.adapt_output, {settings}): ...->(lin1){{inout1}}->...")
    assert not hasattr(model, "addins")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_lora_bias_needs_the_output_hook():
    model = _mlp()
    with pytest.raises(Exception, match="LoRA bias=true adds to the layer's output, which adapt_weight"):
        studio.attach(model, "(LoRA.adapt_weight, bias=true): ...->(lin0){inout1}->...")


def test_export_refuses_mixed_variants(tmp_path):
    model = _mlp()
    att = studio.attach(
        model,
        "(LoRA.adapt_output, r=2, dora=true): ...->(lin0){inout1}->...\n"
        "(LoRA.adapt_output, r=2): ...->(lin1){inout1}->...",
    )
    with pytest.raises(
        ValueError, match=r"PEFT has one use_dora per adapter; these LoRAs mix \[False, True\]"
    ):
        att.export_peft(tmp_path)


def test_from_peft_refuses_what_it_cannot_read(tmp_path):
    pm = peft.get_peft_model(
        _mlp(), peft.LoraConfig(r=2, target_modules=["lin0"], init_lora_weights="pissa_niter_4")
    )
    pm.save_pretrained(str(tmp_path))
    model = _mlp()
    with pytest.raises(ValueError, match="init_lora_weights='pissa_niter_4' is not supported"):
        studio.from_peft(model, tmp_path)
    assert not hasattr(model, "addins")


def test_dora_with_dropout_in_training_equals_peft():
    """In training PEFT's DoRA recomputes the base output from the dropped-out input; same seed, same
    masks, same outputs and gradients."""
    base = _mlp()
    pm = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.3, use_dora=True, target_modules=["lin0", "lin1"]),
    )
    perturb_peft(pm)
    model = copy.deepcopy(base)
    att = studio.attach(model, _ours("alpha=4, dropout=0.3, dora=true"))
    theirs, mine = peft_tensors(pm), our_tensors(att)
    with torch.no_grad():
        for key, p in theirs.items():
            mine[key].copy_(p)
    pm.train()
    model.train()
    torch.manual_seed(11)
    want = pm(X)
    torch.manual_seed(11)
    got = model(X)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    want.square().sum().backward()
    got.square().sum().backward()
    for key, p in theirs.items():
        torch.testing.assert_close(mine[key].grad, p.grad, rtol=1e-4, atol=1e-5)


def test_gaussian_init_draws_a_with_std_one_over_r():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4000, 8))
    att = studio.attach(model, "(LoRA.adapt_output, r=4, init=gaussian): ...->(0){inout1}->...")
    a = att.addins["LoRA_0"]
    assert abs(float(a.lora_A.std()) - 0.25) < 0.005 and float(a.lora_B.abs().sum()) == 0.0


@pytest.mark.parametrize("settings", ["dora=true, alpha=8", "bias=true, alpha=32", "rslora=true, alpha=6"])
def test_variant_checkpoint_loads_on_a_fresh_model(settings, tmp_path):
    model = _mlp().eval()
    att = studio.attach(model, _ours(settings))
    with torch.no_grad():
        for p in att.addins.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    expected = model(X)
    att.save(tmp_path / "a.safetensors")
    fresh = _mlp().eval()
    back = studio.load(fresh, tmp_path / "a.safetensors")
    torch.testing.assert_close(fresh(X), expected)
    assert [a.extra_repr() for _, _, a in back.entries] == [a.extra_repr() for _, _, a in att.entries]


def test_pissa_on_the_weight_method_and_a_failed_attach_leaves_the_base():
    model = _mlp().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(X)
    with studio.attach(model, "(LoRA.adapt_weight, r=2, init=olora): ...->(lin0){inout1}->...") as att:
        torch.testing.assert_close(model(X), out, rtol=1e-5, atol=1e-5)
        att.merge()
        torch.testing.assert_close(model(X), out, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(Exception, match="LoRA rank r must be a positive integer"):
        studio.attach(
            model,
            "(LoRA.adapt_output, r=2, init=pissa): ...->(lin0){inout1}->...\n"
            "(LoRA.adapt_output, r=0): ...->(lin1){inout1}->...",
        )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_strategies_lora_rank_and_alpha_patterns_follow_peft():
    model = _mlp()
    cfg = studio.strategies.lora(
        model,
        ["lin0", "lin1"],
        r=4,
        alpha=8,
        rank_pattern={"lin1": 2},
        alpha_pattern={"^lin0$": 3},
        dora=True,
    )
    assert [(p.target.module, p.settings) for p in cfg.placements] == [
        ("lin0", {"r": 4, "alpha": 3, "dora": True}),
        ("lin1", {"r": 2, "alpha": 8, "dora": True}),
    ]
    # the same model in PEFT: equal outputs, gradients and merged weights
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        rank_pattern={"lin1": 2},
        alpha_pattern={"^lin0$": 3},
        use_dora=True,
        target_modules=["lin0", "lin1"],
    )
    compare(_mlp, X, config, cfg)
    with pytest.raises(ValueError, match=r"strategies.lora: field 'rank_pattern' key '\(' uses '\('"):
        studio.strategies.lora(model, ["lin0"], rank_pattern={"(": 2})


class Kinds(nn.Module):
    """One of every layer kind LoRA adapts: Embedding, transformers Conv1D, MultiheadAttention, Conv2d."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.emb = nn.Embedding(12, 8)
        self.c_fc = Conv1D(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 5, 3)

    def forward(self, ids):
        h = self.c_fc(self.emb(ids))
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.fc(self.conv(h.unsqueeze(1)).flatten(1))


KIND_LINES = [
    "(LoRA.adapt_output, r=2, alpha=3, {s}): ...->(emb){{inout1}}->...",
    "(LoRA.adapt_output, r=2, alpha=3, {s}): ...->(c_fc){{inout1}}->...",
    "(LoRA.adapt_weight, r=2, alpha=3, {s}): ...->(attn){{inout1}}->...",
    "(LoRA.adapt_weight, r=2, alpha=3, {s}): ...->(attn.out_proj){{inout1}}->...",
    "(LoRA.adapt_output, r=2, alpha=3, {s}): ...->(conv){{inout1}}->...",
]


@pytest.mark.parametrize(
    "settings",
    [
        "rslora=true",
        "init=gaussian",
        "init=pissa",
        "init=olora",
        "dora=true",
        "dora=true, init=pissa",
        "layout=peft, dora=true",
    ],
)
def test_variants_on_every_layer_kind(settings):
    """Identity at attach, a training step moves only the add-ins, merge keeps the outputs, detach
    (merged or not) restores the model bit for bit."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = Kinds().eval()
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(ids)
    att = studio.attach(model, "\n".join(line.format(s=settings) for line in KIND_LINES))
    torch.testing.assert_close(model(ids), out, rtol=1e-4, atol=1e-5)
    opt = torch.optim.SGD(att.parameters(), lr=0.1)
    start = {n: p.detach().clone() for n, p in att.addins.named_parameters()}
    model(ids).square().sum().backward()
    opt.step()
    # the first step moves B, except on the Embedding, which starts with A at zero (as PEFT's): A moves
    moved = {n for n in start if n.endswith("lora_A" if n.startswith("LoRA_emb") else "lora_B")}
    assert len(moved) == len(KIND_LINES)
    assert all(not torch.equal(p, start[n]) for n, p in att.addins.named_parameters() if n in moved)
    trained = model(ids).detach()
    assert not torch.allclose(trained, out)
    att.merge()
    torch.testing.assert_close(model(ids), trained, rtol=1e-4, atol=1e-5)
    att.detach()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert type(model.attn) is nn.MultiheadAttention
