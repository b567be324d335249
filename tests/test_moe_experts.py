"""LoRA on fused mixture-of-experts weights (transformers 5's Mixtral / Qwen2-MoE ``experts.gate_up_proj``
``[E, 2I, H]`` and ``experts.down_proj`` ``[E, H, I]``): one update per expert, equal to PEFT's
``target_parameters`` in outputs, gradients and files; reached by ``lora_all`` and ``strategies.lora``."""

import copy
import json

import pytest
import torch
from torch import nn

import addin_studio as studio

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")

EXPERT_PARAMS = ["experts.gate_up_proj", "experts.down_proj"]
# PEFT nests one ParamWrapper per parameter of a module, the first registered innermost
PEFT_KEYS = {"gate_up_proj": "experts.base_layer", "down_proj": "experts"}


def _mixtral():
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    return transformers.MixtralForCausalLM(cfg).eval()


def _qwen2_moe():
    torch.manual_seed(0)
    cfg = transformers.Qwen2MoeConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_experts=4,
        num_experts_per_tok=2,
    )
    return transformers.Qwen2MoeForCausalLM(cfg).eval()


MODELS = pytest.mark.parametrize("make", [_mixtral, _qwen2_moe], ids=["mixtral", "qwen2_moe"])
IDS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))


def _experts(model):
    return {n: m for n, m in model.named_modules() if type(m).__name__.endswith("Experts")}


def _ours_and_peft(make):
    """Our LoRA on every expert weight (B set nonzero) and PEFT's with the same factors."""
    model = make()
    base = copy.deepcopy(model)
    cfg = studio.strategies.lora(model, target_parameters=EXPERT_PARAMS, r=2, alpha=4)
    att = studio.attach(model, cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for lora in att.addins.values():
            lora.lora_B.copy_(torch.randn(lora.lora_B.shape, generator=g) * 0.1)
    pm = peft.get_peft_model(
        base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=[], target_parameters=EXPERT_PARAMS)
    ).eval()
    state = {}
    for key, placement, _ in att.entries:
        lora = att.addins[key]
        where = placement.target.module.rpartition(".")[0] + "." + PEFT_KEYS[lora.param]  # <mlp>.experts...
        state[f"base_model.model.{where}.lora_A.default.weight"] = lora.lora_A.detach().clone()
        state[f"base_model.model.{where}.lora_B.default.weight"] = lora.lora_B.detach().clone()
    result = pm.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and not [k for k in result.missing_keys if "lora_" in k]
    return model, att, pm


@MODELS
def test_outputs_and_gradients_equal_peft(make, one_thread):
    model, att, pm = _ours_and_peft(make)
    assert len(att.addins) == 4  # gate_up_proj and down_proj of 2 layers
    ours = model(IDS).logits
    theirs = pm(IDS).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert (ours - make()(IDS).logits).abs().max() > 1e-3  # the update changes the output
    ours.square().mean().backward()
    theirs.square().mean().backward()
    peft_params = dict(pm.named_parameters())
    for key, placement, _ in att.entries:
        lora = att.addins[key]
        where = placement.target.module.rpartition(".")[0] + "." + PEFT_KEYS[lora.param]
        for part in ("lora_A", "lora_B"):
            grad = peft_params[f"base_model.model.{where}.{part}.default.weight"].grad
            assert grad is not None and grad.abs().sum() > 0
            torch.testing.assert_close(getattr(lora, part).grad, grad, rtol=1e-5, atol=1e-7)


@MODELS
def test_the_factors_are_peft_shapes_and_start_as_peft(make, one_thread):
    model = make()
    ref = model(IDS).logits
    att = studio.attach(model, studio.strategies.lora(model, target_parameters=EXPERT_PARAMS, r=2, alpha=4))
    experts = next(iter(_experts(model).values()))
    E, two_i, H = experts.gate_up_proj.shape
    loras = list(att.addins.values())
    assert (loras[0].param, tuple(loras[0].lora_A.shape), tuple(loras[0].lora_B.shape)) == (
        "gate_up_proj",
        (E * 2, H),
        (two_i, 2 * E),
    )
    assert (loras[1].param, tuple(loras[1].lora_A.shape), tuple(loras[1].lora_B.shape)) == (
        "down_proj",
        (E * 2, two_i // 2),
        (H, 2 * E),
    )
    assert all(torch.equal(lora.lora_B, torch.zeros_like(lora.lora_B)) for lora in loras)
    bound = 1 / H**0.5  # Kaiming-uniform over the input, as PEFT's nn.Linear lora_A
    assert 0.5 * bound < loras[0].lora_A.abs().max() <= bound
    assert torch.equal(model(IDS).logits, ref)  # identity at attach
    assert "experts=4" in repr(loras[0])


@MODELS
def test_files_equal_peft_and_load_both_ways(make, tmp_path, one_thread):
    model, att, pm = _ours_and_peft(make)
    out = model(IDS).logits
    att.export_peft(tmp_path / "ours")
    pm.save_pretrained(tmp_path / "peft")
    ours = safetensors_torch.load_file(tmp_path / "ours" / "adapter_model.safetensors")
    theirs = safetensors_torch.load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (2, 4, None)
    assert config["target_parameters"] == sorted(
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in EXPERT_PARAMS
    )
    loaded = peft.PeftModel.from_pretrained(make(), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(loaded(IDS).logits, out, rtol=1e-6, atol=1e-6)
    back_model = make()
    back = studio.from_peft(back_model, tmp_path / "peft")
    assert sorted(str(back.config).splitlines()) == sorted(str(att.config).splitlines())
    torch.testing.assert_close(back_model(IDS).logits, out, rtol=1e-6, atol=1e-6)


def test_from_peft_refuses_expert_factors_of_the_wrong_shape(tmp_path):
    model, att, pm = _ours_and_peft(_mixtral)
    pm.save_pretrained(tmp_path)
    file = tmp_path / "adapter_model.safetensors"
    tensors = safetensors_torch.load_file(file)
    key = "base_model.model.model.layers.1.mlp.experts.lora_A.weight"
    tensors[key] = tensors[key][:7]
    safetensors_torch.save_file(tensors, file)
    with pytest.raises(
        ValueError,
        match=r"the adapter's lora_A for 'model.layers.1.mlp.experts.down_proj' "
        r"has shape \(7, 64\); PEFT's LoRA on 4 experts has 4\*r rows",
    ):
        studio.from_peft(_mixtral(), tmp_path)
    tensors[key] = torch.zeros(12, 64)  # r=3 where the other tensors say r=2: lora_B [32, 8] disagrees
    safetensors_torch.save_file(tensors, file)
    with pytest.raises(
        ValueError,
        match=r"lora_B for 'model.layers.1.mlp.experts.down_proj' has shape "
        r"\(32, 8\); this model's layer needs \(32, 12\)",
    ):
        studio.from_peft(_mixtral(), tmp_path)


def test_lora_all_reaches_every_expert_weight():
    model = _mixtral()
    cfg = studio.strategies.lora_all(model, r=2)
    expert_placements = [p for p in cfg.placements if "param" in p.settings]
    wanted = {(path, name) for path in _experts(model) for name in ("gate_up_proj", "down_proj")}
    assert {(p.target.module, p.settings["param"]) for p in expert_placements} == wanted
    assert len(expert_placements) == 4
    assert all(p.method == "adapt_weight" for p in expert_placements)
    assert studio.parse(str(cfg)) == cfg
    # attention (4 per layer) and lm_head keep their output hooks
    assert sum(p.method == "adapt_output" for p in cfg.placements) == 9
    off = studio.strategies.lora_all(model, r=2, experts=False)
    assert not [p for p in off.placements if "param" in p.settings]
    with studio.attach(model, cfg) as att:
        trainable, _ = studio.count_parameters(model)
        expert_lora = sum(
            att.addins[k].lora_A.numel() + att.addins[k].lora_B.numel()
            for k in att.addins
            if att.addins[k].experts
        )
        # per layer: gate_up (A [4*2, 32], B [128, 2*4]) + down (A [4*2, 64], B [32, 2*4])
        assert expert_lora == 2 * (8 * 32 + 128 * 8 + 8 * 64 + 32 * 8)
        assert trainable == sum(p.numel() for p in att.addins.parameters())


def test_lora_all_on_qwen2_moe_adapts_experts_and_the_shared_expert():
    model = _qwen2_moe()
    cfg = studio.strategies.lora_all(model, r=2)
    targets = {(p.target.module, p.settings.get("param")) for p in cfg.placements}
    for i in range(2):
        assert {
            (f"model.layers.{i}.mlp.experts", "gate_up_proj"),
            (f"model.layers.{i}.mlp.experts", "down_proj"),
            (f"model.layers.{i}.mlp.shared_expert.down_proj", None),
            (f"model.layers.{i}.mlp.shared_expert_gate", None),
        } <= targets
    assert studio.parse(str(cfg)) == cfg


@MODELS
def test_identity_train_merge_unmerge_detach(make, one_thread):
    model = make()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model(IDS).logits
    att = studio.attach(model, studio.strategies.lora_all(model, r=2, alpha=4))
    assert torch.equal(model(IDS).logits, ref)
    opt = torch.optim.SGD(att.addins.parameters(), lr=0.5)
    loss = nn.functional.cross_entropy(model(IDS).logits.flatten(0, 1), IDS.flatten())
    loss.backward()
    experts = [lora for lora in att.addins.values() if lora.experts]
    assert len(experts) == 4
    assert all(lora.lora_A.grad is not None and lora.lora_B.grad.abs().sum() > 0 for lora in experts)
    opt.step()
    unmerged = model(IDS).logits
    assert (unmerged - ref).abs().max() > 1e-4
    att.merge()
    for path, m in _experts(model).items():
        assert not torch.equal(m._parameters["down_proj"], state[f"{path}.down_proj"])
    torch.testing.assert_close(model(IDS).logits, unmerged, rtol=1e-5, atol=1e-5)
    att.unmerge()
    assert torch.equal(model(IDS).logits, unmerged)
    att.detach()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all("__addin_base__" not in type(m).__dict__ for m in _experts(model).values())  # own class back
    assert torch.equal(model(IDS).logits, ref)


def test_merge_adds_each_experts_own_update():
    model = _mixtral()
    text = "(LoRA.adapt_weight, r=2, alpha=4, param=down_proj): ...->(model.layers[0].mlp.experts){inout1}"
    att = studio.attach(model, text)
    lora = next(iter(att.addins.values()))
    with torch.no_grad():
        lora.lora_B.normal_()
    W = model.model.layers[0].mlp.experts._parameters["down_proj"].clone()
    att.merge()
    merged = model.model.layers[0].mlp.experts._parameters["down_proj"]
    for e in range(4):
        A_e, B_e = lora.lora_A[e * 2 : (e + 1) * 2], lora.lora_B[:, e::4]
        torch.testing.assert_close(merged[e], W[e] + 2.0 * B_e @ A_e)
    att.unmerge()
    assert torch.equal(model.model.layers[0].mlp.experts._parameters["down_proj"], W)


def test_config_strings_round_trip():
    model = _mixtral()
    for cfg in (
        studio.strategies.lora_all(model, r=2),
        studio.strategies.lora(
            model, ["q_proj"], target_parameters=["experts.down_proj"], r=2, rank_pattern={"down_proj": 4}
        ),
        studio.parse(
            "(LoRA.adapt_weight, r=2, rslora=true, init=gaussian, param=gate_up_proj): "
            "...->(model.layers[0:2].mlp.experts){inout1}->..."
        ),
    ):
        assert studio.parse(str(cfg)) == cfg
    cfg = studio.strategies.lora(
        model, ["q_proj"], target_parameters=["experts.down_proj"], r=2, rank_pattern={"down_proj": 4}
    )
    ranks = {(p.target.module, p.settings.get("param")): p.settings["r"] for p in cfg.placements}
    assert ranks[("model.layers.1.mlp.experts", "down_proj")] == 4  # PEFT's pattern key: <module>.<param>
    assert ranks[("model.layers.1.self_attn.q_proj", None)] == 2


def test_save_and_load_the_adapters(tmp_path):
    model = _mixtral()
    att = studio.attach(model, studio.strategies.lora_all(model, r=2))
    with torch.no_grad():
        for lora in att.addins.values():
            lora.lora_B.normal_(std=0.1)
    out = model(IDS).logits
    att.save(tmp_path / "a.safetensors")
    fresh = _mixtral()
    studio.load(fresh, tmp_path / "a.safetensors")
    assert torch.equal(fresh(IDS).logits, out)


def test_param_errors_are_config_errors_and_leave_the_model_untouched():
    model = _mixtral()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    where = "...->(model.layers[0].mlp.experts){inout1}->..."
    with pytest.raises(
        studio.ConfigError, match="MixtralExperts has no parameter 'up_proj' for LoRA to adapt"
    ):
        studio.attach(model, f"(LoRA.adapt_weight, r=2, param=up_proj): {where}")
    with pytest.raises(
        studio.ConfigError, match=r"LoRA adapts a matrix; 'weight' of MixtralRMSNorm has shape \(32,\)"
    ):
        studio.attach(model, "(LoRA.adapt_weight, r=2, param=weight): ...->(model.norm){inout1}->...")
    model.model.layers[0].mlp.experts.register_parameter("four", nn.Parameter(torch.zeros(4, 2, 3, 5)))
    with pytest.raises(
        studio.ConfigError,
        match=r"'four' of MixtralExperts has shape \(4, 2, 3, 5\) "
        r"\(param= takes a 2-D parameter, or a 3-D stack of "
        r"expert matrices",
    ):
        studio.attach(model, f"(LoRA.adapt_weight, r=2, param=four): {where}")
    del model.model.layers[0].mlp.experts.four
    with pytest.raises(
        studio.ConfigError,
        match=r"LoRA on the expert weights 'down_proj' \(one update per "
        r"expert\) is plain LoRA \(rslora allowed\), as PEFT's "
        r"target_parameters; not dora=true",
    ):
        studio.attach(model, f"(LoRA.adapt_weight, r=2, param=down_proj, dora=true): {where}")
    with pytest.raises(studio.ConfigError, match="starts from init=kaiming or init=gaussian, not init=pissa"):
        studio.attach(model, f"(LoRA.adapt_weight, r=2, param=down_proj, init=pissa): {where}")
    with pytest.raises(studio.ConfigError, match="the output hook cannot adapt this layer"):
        studio.attach(model, f"(LoRA.adapt_output, r=2, param=down_proj): {where}")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert "__addin_base__" not in type(model.model.layers[0].mlp.experts).__dict__


def test_strategy_target_parameter_errors():
    model = _mixtral()
    with pytest.raises(
        ValueError,
        match=r"target parameter 'experts.up_proj' matches no parameter of "
        r"MixtralForCausalLM",
    ):
        studio.strategies.lora(model, target_parameters=["experts.up_proj"])
    with pytest.raises(ValueError, match="target_parameters must be a list of parameter names"):
        studio.strategies.lora(model, target_parameters="experts.down_proj")
    with pytest.raises(ValueError, match=r"target parameter 'model.norm.weight' has shape \(32,\)"):
        studio.strategies.lora(model, target_parameters=["norm.weight"])
    with pytest.raises(
        ValueError,
        match="'model.layers.0.self_attn.q_proj' is both a target module and "
        "holds target parameter 'model.layers.0.self_attn.q_proj.weight'",
    ):
        studio.strategies.lora(model, ["q_proj"], target_parameters=["q_proj.weight"])


class _TransposedExperts(nn.Module):
    """Experts stored ``[E, in, out]`` (transformers' ``is_transposed = True``), each ``x @ W[e]``."""

    def __init__(self, experts=3, dim=6, out=5):
        super().__init__()
        self.num_experts = experts
        self.is_transposed = True
        self.up = nn.Parameter(torch.randn(experts, dim, out))

    def forward(self, x):  # every expert on every row, summed
        return torch.einsum("bi,eio->bo", x, self.up)


class _Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.experts = _TransposedExperts()

    def forward(self, x):
        return self.experts(x)


def test_transposed_experts_match_peft(tmp_path):
    torch.manual_seed(0)
    model = _Holder()
    base = copy.deepcopy(model)
    x = torch.randn(4, 6)
    cfg = studio.strategies.lora_all(model, r=2)
    assert [(p.target.module, p.settings["param"]) for p in cfg.placements] == [("experts", "up")]
    att = studio.attach(model, cfg)
    lora = next(iter(att.addins.values()))
    assert (tuple(lora.lora_A.shape), tuple(lora.lora_B.shape)) == ((6, 6), (5, 6))
    with torch.no_grad():
        lora.lora_B.normal_()
    att.export_peft(tmp_path)
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path))
    torch.testing.assert_close(model(x), theirs(x))
    att.merge()
    torch.testing.assert_close(model(x), theirs(x))
