"""LoRA on every kind of layer: the weight method, Embedding, transformers Conv1D, MultiheadAttention,
named parameters, tied weights, and no silent no-ops (a hook on a module that never runs).

Equality with PEFT is checked on identical weights: outputs, gradients (input and LoRA factors; with
peft >= 0.22, whose MultiheadAttention backward is wrong, against the math instead) and merged weights.
"""

from __future__ import annotations

import copy
import io
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import addin_studio as studio
from peft_compare import math_grads, peft_mha_fixed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


class ReadsWeight(nn.Module):
    """Like BEiT's attention: owns ``qkv`` but computes ``F.linear(x, self.qkv.weight)``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(6, 6)
        self.proj = nn.Linear(6, 3)

    def forward(self, x):
        return self.proj(F.linear(x, self.qkv.weight, self.qkv.bias))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 6, padding_idx=0)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 4)
        # registered last: PEFT, meeting a Conv1D, switches fan_in_fan_out on in its config for every
        # layer it wraps afterwards
        self.c_fc = Conv1D(8, 6)  # GPT-2 layout: weight [in=6, out=8]

    def forward(self, ids):
        h = self.c_fc(self.emb(ids))
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.fc(h)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = ReadsWeight()

    def forward(self, x):
        return self.block(x)


IDS = torch.tensor([[1, 2, 3, 0, 5], [7, 8, 0, 10, 11]])


def _net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _lora_tensors(peft_model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module path: (A, B)}`` of a PEFT model, in our layouts (MHA out_proj under its own path)."""
    found = {}
    for name, module in peft_model.named_modules():
        path = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        if hasattr(module, "lora_embedding_A") and "default" in module.lora_embedding_A:
            found[path] = (module.lora_embedding_A["default"], module.lora_embedding_B["default"])
        elif hasattr(module, "lora_A") and "default" in module.lora_A:
            found[path] = (module.lora_A["default"].weight, module.lora_B["default"].weight)
    return found


def _ours(att) -> dict[str, nn.Module]:
    return {p.target.module: a for _, p, a in att.entries}


def test_every_kind_equals_peft_outputs_gradients_and_merged_weights():
    """Outputs and merged weights equal PEFT's; gradients equal PEFT's where PEFT's backward is right
    (peft < 0.22; the MHA's double out_proj add accounted for) and the math otherwise (peft >= 0.22 unmerges
    its MultiheadAttention before backward, which also skews every gradient upstream of it)."""
    base = _net()
    targets = ["emb", "c_fc", "attn", "fc"]
    pm = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False),
    )  # Conv1D: fan_in_fan_out
    pm.eval()
    ours = copy.deepcopy(base)
    cfg = studio.strategies.lora(ours, targets, r=4, alpha=8)
    methods = {p.target.module: p.method for p in cfg.placements}
    assert methods == {
        "emb": "adapt_output",
        "c_fc": "adapt_output",
        "attn": "adapt_weight",
        "attn.out_proj": "adapt_weight",
        "fc": "adapt_output",
    }
    assert pm.base_model.model.c_fc.fan_in_fan_out and not pm.base_model.model.fc.fan_in_fan_out
    att = studio.attach(ours, cfg)
    theirs = _lora_tensors(pm)
    assert set(theirs) == set(_ours(att))
    # PEFT 0.21's MultiheadAttention adds its out_proj update twice (its merge adds the delta to the
    # weight, then calls out_proj.merge, which adds it again): its effective out_proj B is 2x its lora_B
    twice = {} if peft_mha_fixed() else {"attn.out_proj": 2.0}
    with torch.no_grad():
        for path, addin in _ours(att).items():
            a, b = theirs[path]
            assert addin.lora_A.shape == a.shape and addin.lora_B.shape == b.shape, path
            addin.lora_A.copy_(a)
            addin.lora_B.copy_(b * twice.get(path, 1.0))
    out_theirs, out_ours = pm(IDS), ours(IDS)
    assert (out_ours - base(IDS)).abs().max() > 1e-2  # the LoRAs do something
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-6)
    out_theirs.square().sum().backward()
    out_ours.square().sum().backward()
    if peft_mha_fixed():
        expected, _ = math_grads(base, att, IDS)
        off = 0.0
        for path, addin in _ours(att).items():
            a, b = theirs[path]
            for part, mine, peft_grad in (("lora_A", addin.lora_A, a), ("lora_B", addin.lora_B, b)):
                g = expected[(path, part)]
                torch.testing.assert_close(
                    mine.grad,
                    g,
                    rtol=1e-4,
                    atol=1e-5 * max(1.0, float(g.abs().max())),
                    msg=lambda m: f"{path} {part}: {m}",
                )
                off = max(off, float((peft_grad.grad - g).abs().max() / g.abs().max()))
            if path == "fc":  # downstream of the attention: PEFT's gradient is right there
                torch.testing.assert_close(addin.lora_A.grad, a.grad, rtol=1e-4, atol=1e-5)
        assert off > 0.05  # PEFT 0.22's own gradients are not the math (this test compares with the math)
    else:
        for path, addin in _ours(att).items():
            a, b = theirs[path]
            # PEFT's second out_proj add goes through .data, so its gradient sees one B only: A's gradient
            # is half of what its forward implies, B's is ours
            # (absolute error scaled to the gradient's size: 5e-5 on an entry of 0.24 with peft 0.21.2)
            pairs = ((addin.lora_A.grad, a.grad * twice.get(path, 1.0)), (addin.lora_B.grad, b.grad))
            for mine, ref in pairs:
                torch.testing.assert_close(
                    mine,
                    ref,
                    rtol=1e-4,
                    atol=1e-5 * max(1.0, float(ref.abs().max())),
                    msg=lambda m: f"{path}: {m}",
                )
    with torch.no_grad():
        att.merge()
        merged_theirs = pm.merge_and_unload()
        for name, value in merged_theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[name], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours(IDS), out_ours, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["emb", "c_fc", "fc"])
def test_output_hook_and_weight_method_agree_on_each_layer(kind):
    outs = []
    for method in ("adapt_output", "adapt_weight"):
        model = _net()
        with studio.attach(model, f"(LoRA.{method}, r=3): ...->({kind}){{inout1}}->...") as att:
            with torch.no_grad():
                addin = next(iter(att.addins.values()))
                addin.lora_B.normal_(generator=torch.Generator().manual_seed(1))
                addin.lora_A.normal_(generator=torch.Generator().manual_seed(2))  # emb: A starts at zero
            outs.append(model(IDS))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_weight_method_identity_merge_exact_and_detach_restores_everything():
    model = _net()
    state, ref = _state(model), model(IDS)
    att = studio.attach(
        model,
        "(LoRA.adapt_weight, r=2): ...->(fc){inout1}->...\n"
        "(LoRA.adapt_weight, r=2): ...->(attn){inout1}->...",
    )
    assert torch.equal(model(IDS), ref)
    assert model.state_dict().keys() == {*state, *(f"addins.{k}" for k in att.addins.state_dict())}
    with torch.no_grad():
        for a in att.addins.values():
            a.lora_B.normal_()
    unmerged = model(IDS)
    att.merge()
    assert type(model.fc) is nn.Linear and type(model.attn) is nn.MultiheadAttention  # zero extra cost
    # W + BA stored == W + BA computed bit for bit, but a merged MultiheadAttention without grad-requiring
    # weights takes torch's fused fast path, which rounds differently
    torch.testing.assert_close(model(IDS), unmerged, rtol=1e-5, atol=1e-6)
    att.unmerge()
    assert torch.equal(model(IDS), unmerged)
    att.detach()
    assert type(model.fc) is nn.Linear and "_addin_weight_fns" not in model.fc.__dict__
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.state_dict().keys() == state.keys() and torch.equal(model(IDS), ref)


def test_attached_weight_method_pickles_and_deep_copies():
    model = _net()
    att = studio.attach(model, "(LoRA.adapt_weight, r=2): ...->(attn){inout1}->...")
    with torch.no_grad():
        next(iter(att.addins.values())).lora_B.normal_()
    expected = model(IDS)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for clone in (
        pickle.loads(pickle.dumps(model)),
        copy.deepcopy(model),
        torch.load(buffer, weights_only=False),
    ):
        assert torch.equal(clone(IDS), expected)
        assert isinstance(clone.attn, nn.MultiheadAttention)


def test_never_called_module_is_a_config_error_naming_the_reader_and_leaves_model_untouched():
    model = Outer()
    x = torch.randn(2, 6)
    state = _state(model)
    with pytest.raises(studio.ConfigError) as info:
        studio.attach(model, "(LoRA.adapt_output, r=2): ...->(block.qkv){inout1}->...", example_input=x)
    message = str(info.value)
    assert "module 'block.qkv' (Linear) never runs as a module" in message
    assert "its parent 'block' (ReadsWeight) runs and reads 'qkv.weight' itself" in message
    assert "(LoRA.adapt_weight) at (block.qkv){inout1}" in message
    assert info.value.position == message.splitlines()[1].index("qkv") - 2
    assert not hasattr(model, "addins") and all(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # the weight method is right there, and lora_all picks it given the example input
    cfg = studio.strategies.lora_all(model, r=2, example_input=x)
    assert {p.target.module: p.method for p in cfg.placements} == {
        "block.qkv": "adapt_weight",
        "block.proj": "adapt_output",
    }
    assert "(LoRA.adapt_weight, r=2): ...->(block.qkv){inout1}->..." in str(cfg)
    with studio.attach(model, cfg, example_input=x) as att:
        model(x).sum().backward()
        assert all(a.lora_B.grad is not None and a.lora_B.grad.abs().sum() > 0 for a in att.addins.values())


def test_without_example_input_the_first_forward_reports_dead_hooks_then_costs_nothing():
    model = Outer()
    x = torch.randn(2, 6)
    att = studio.attach(
        model,
        "(LoRA.adapt_output, r=2): ...->(block.qkv){inout1}->...\n"
        "(LoRA.adapt_output, r=2): ...->(block.proj){inout1}->...",
    )
    with pytest.raises(
        studio.ConfigError,
        match=r"(?s)1 add-in placement\(s\) did nothing.*"
        r"\(LoRA.adapt_output\) at block.qkv:post: "
        r"module 'block.qkv' did not",
    ):
        model(x)
    att.detach()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    att = studio.attach(model, "(LoRA.adapt_output, r=2): ...->(block.proj){inout1}->...")
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa
    assert hooks() == 3  # the LoRA hook + the check's pre-hook and root hook
    model(x)
    assert hooks() == 1  # the check removed itself
    pickle.loads(pickle.dumps(model))
    att.detach()


def test_trainer_first_step_reports_the_dead_hook():
    model = nn.Sequential(ReadsWeight())
    studio.attach(model, "(LoRA.adapt_output, r=2): ...->(0.qkv){inout1}->...\ntrainable(0.proj)")
    data = [(torch.randn(4, 6), torch.randint(0, 3, (4,)))]
    with pytest.raises(studio.ConfigError, match="did nothing in this forward pass"):
        studio.Trainer(model, data, epochs=1).fit()


def test_conv_subclasses_get_the_weight_method_and_the_hook_is_refused():
    pytest.importorskip("timm")
    from timm.layers import Conv2dSame, ScaledStdConv2d

    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), ScaledStdConv2d(4, 4, 3), nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(1, 3, 9, 9)
    cfg = studio.strategies.lora_all(model, r=2)
    assert [p.method for p in cfg.placements] == ["adapt_weight", "adapt_weight", "adapt_output"]
    with pytest.raises(studio.ConfigError, match="Conv2dSame has its own forward"):
        studio.attach(model, "(LoRA.adapt_output, r=2): ...->(0){inout1}->...")
    ref = model(x)
    with studio.attach(model, cfg, example_input=x) as att:
        assert torch.equal(model(x), ref)
        with torch.no_grad():
            for a in att.addins.values():
                a.lora_B.normal_(std=0.1)
            unmerged = model(x)
            att.merge()
            torch.testing.assert_close(model(x), unmerged)  # the hooked 1x1 conv rounds differently
            att.unmerge()
            model[2].weight.requires_grad_(False)
            att.addins["LoRA_2"].lora_B.zero_()  # leave only the weight methods: merged is bit for bit
            unmerged = model(x)
            att.merge()
            assert torch.equal(model(x), unmerged)
    assert torch.equal(model(x), ref)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_gpt2_lora_all_reaches_conv1d_and_tied_merge_is_refused_then_untied():
    model = _gpt2()
    ids = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(0))
    state, ref = _state(model), model(ids).logits
    assert model.lm_head.weight is model.transformer.wte.weight
    cfg = studio.strategies.lora_all(model, r=2)
    assert {p.target.module for p in cfg.placements} >= {
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "lm_head",
    }
    att = studio.attach(model, cfg)
    with torch.no_grad():
        for a in att.addins.values():
            a.lora_B.normal_(std=0.1)
        unmerged = model(ids).logits
        with pytest.raises(ValueError) as info:
            att.merge()
    assert "'lm_head.weight': it is the same parameter as 'transformer.wte.weight' (tied weights)" in str(
        info.value
    ) and "merge(untie=True)" in str(info.value)
    assert not att.merged and all(
        torch.equal(v, state[k]) for k, v in model.state_dict().items() if not k.startswith("addins.")
    )
    with torch.no_grad():
        att.merge(untie=True)
        assert model.lm_head.weight is not model.transformer.wte.weight
        assert torch.equal(model.transformer.wte.weight, state["transformer.wte.weight"])
        torch.testing.assert_close(model(ids).logits, unmerged, rtol=1e-4, atol=1e-5)
    att.detach()
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie is back
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(ids).logits, ref)


def test_lora_on_a_named_parameter_and_on_the_embedding_by_target():
    model = _gpt2()
    ids = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(0))
    ref = model(ids).logits
    cfg = studio.strategies.lora(model, ["wte"], r=2, alpha=2)
    assert [(p.target.module, p.method) for p in cfg.placements] == [("transformer.wte", "adapt_output")]
    text = "(LoRA.adapt_weight, r=2, param=bias): ...->(transformer.h.0.attn.c_attn){inout1}->..."
    with pytest.raises(studio.ConfigError, match="LoRA adapts a matrix"):
        studio.attach(model, text)
    text = "(LoRA.adapt_weight, r=2, param=wpe): ...->(transformer){inout1}->..."
    with pytest.raises(studio.ConfigError, match="no parameter 'wpe'"):
        studio.attach(model, text)
    model.transformer.register_parameter("extra", nn.Parameter(torch.zeros(16, 16)))
    with studio.attach(
        model, "(LoRA.adapt_weight, r=2, param=extra): ...->(transformer){inout1}->..."
    ) as att:
        addin = next(iter(att.addins.values()))
        assert addin.lora_A.shape == (2, 16) and addin.lora_B.shape == (16, 2)
        with torch.no_grad():
            addin.lora_B.fill_(1.0)
        assert torch.equal(model.transformer.extra, addin.delta())
        assert torch.equal(model(ids).logits, ref)  # nothing reads 'extra'


def test_weight_method_compiles_without_graph_breaks():
    import torch._dynamo as dynamo

    dynamo.reset()
    model = nn.Sequential(ReadsWeight())
    x = torch.randn(2, 6)
    cfg = studio.strategies.lora_all(model, r=2, example_input=x)
    with studio.attach(model, cfg, example_input=x) as att:
        with torch.no_grad():
            for a in att.addins.values():
                a.lora_B.normal_()
        explained = dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
        eager = model(x)
        compiled = torch.compile(model, backend="eager")
        torch.testing.assert_close(compiled(x), eager)
    dynamo.reset()


def test_peft_export_and_import_cover_embedding_and_conv1d(tmp_path):
    model = _gpt2()
    state = _state(model)
    ids = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(0))
    cfg = studio.strategies.lora(model, ["wte", "c_attn", "c_fc"], r=2, alpha=4)
    att = studio.attach(model, cfg)
    with torch.no_grad():
        for a in att.addins.values():
            a.lora_A.normal_(std=0.1)  # an Embedding's LoRA starts with A at zero, as PEFT's
            a.lora_B.normal_(std=0.1)
    expected = model(ids).logits
    att.export_peft(tmp_path)
    att.detach()
    import json

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True
    assert config["target_modules"] == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.mlp.c_fc",
        "transformer.wte",
    ]
    fresh = _gpt2()
    fresh.load_state_dict(state)
    loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-5, atol=1e-5)
    back = _gpt2()
    back.load_state_dict(state)
    att = studio.from_peft(back, tmp_path)
    assert {p.target.module for p in att.config.placements} == set(config["target_modules"])
    torch.testing.assert_close(back(ids).logits, expected, rtol=1e-5, atol=1e-5)
    with studio.attach(_gpt2(), "(LoRA.adapt_weight): ...->(lm_head){inout1}->...") as other:
        other.export_peft(tmp_path / "weight")  # the weight method on a Linear is PEFT's LoRA too
    mha = nn.Sequential(nn.MultiheadAttention(8, 2))
    with studio.attach(mha, "(LoRA.adapt_weight): ...->(0){inout1}->...") as other:
        with pytest.raises(ValueError, match="'0' has a LoRA but its out_proj '0.out_proj' has none"):
            other.export_peft(tmp_path / "mha")


def test_checkpoints_and_detach_stay_exact_on_a_tied_model(tmp_path):
    model = _gpt2()
    state = _state(model)
    ids = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(0))
    att = studio.attach(model, studio.strategies.lora_all(model, r=2))
    with torch.no_grad():
        for a in att.addins.values():
            a.lora_B.normal_(std=0.1)
    expected = model(ids).logits
    att.merge(untie=True)
    att.save(tmp_path / "a.safetensors")  # saves the unmerged base, then merges (untied) again
    assert att.merged and model.lm_head.weight is not model.transformer.wte.weight
    att.detach()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    again = studio.load(model, tmp_path / "a.safetensors")
    torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-6)
    again.detach()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_an_embedding_lora_starts_as_peft_starts_it(init):
    """PEFT starts lora_embedding_A at zero and lora_embedding_B ~ N(0, 1) (the LoRA paper's code), for
    init_lora_weights True and "gaussian" alike; so do we. B @ A is zero: the identity at attach."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(300, 64))
    ids = torch.arange(300).view(3, 100)
    before = model(ids)
    settings = "" if init == "kaiming" else ", init=gaussian"
    with studio.attach(model, f"(LoRA.adapt_output, r=4{settings}): ...->(0){{inout1}}->...") as att:
        lora = att.addins["LoRA_0"]
        assert not lora.lora_A.any() and abs(float(lora.lora_B.std()) - 1.0) < 0.1
        assert torch.equal(model(ids), before)
    pm = peft.get_peft_model(
        copy.deepcopy(model),
        peft.LoraConfig(
            r=4, target_modules=["0"], init_lora_weights=True if init == "kaiming" else "gaussian"
        ),
    )
    a, b = _lora_tensors(pm)["0"]
    assert not a.any() and abs(float(b.std()) - 1.0) < 0.1
