"""LoRA's VeLoRA, KaSA, MiCA and MonteCLoRA settings beyond PEFT's matrix rows
(``tests/test_peft_matrix.py``): what each changes in training, their files both ways, and the errors for
settings they cannot take."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

import addin_studio as studio

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3)).eval()


def _lora(att):
    (addin,) = att.addins.values()
    return addin


def _perturb(att, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in att.addins.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("addins")}


X = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))


def _grads(settings: str, x=X):
    """Outputs, input gradient and factor gradients of one training forward/backward."""
    model = _mlp()
    att = studio.attach(model, f"(LoRA.adapt_output, r=4, {settings}): ...->(0){{inout1}}->...")
    _perturb(att)
    model.train()
    xi = x.clone().requires_grad_(True)
    out = model(xi)
    out.square().sum().backward()
    lora = _lora(att)
    return out.detach(), xi.grad, lora.lora_A.grad, lora.lora_B.grad, lora


def test_velora_forward_and_input_gradient_are_lora_but_A_gradient_is_compressed():
    out, gx, gA, gB, _ = _grads("alpha=8")
    out_v, gx_v, gA_v, gB_v, lora = _grads("alpha=8, velora=true, velora_groups=2")
    torch.testing.assert_close(out_v, out)
    torch.testing.assert_close(gx_v, gx)
    torch.testing.assert_close(gB_v, gB)
    assert (gA_v - gA).abs().max() > 1e-3  # A's gradient comes from the rank-1 sub-token reconstruction
    # the projection: the batch's normalized mean sub-token
    mean = X.reshape(-1, 5).mean(0)
    torch.testing.assert_close(lora.lora_velora_embed, mean / mean.norm())


def test_velora_projection_gradient_by_hand():
    from addin_studio.addins.lora_velora import VeloraProjection

    x = torch.randn(2, 3, 7, requires_grad=True)  # 7 features in 2 groups of 4: one padded zero
    A = torch.randn(5, 7, requires_grad=True)
    v = torch.nn.functional.normalize(torch.randn(4), dim=0)
    G = torch.randn(2, 3, 5)
    h = VeloraProjection.apply(x, A, v, 2, 1.5)
    torch.testing.assert_close(h, x @ A.t())
    (h * G).sum().backward()
    sub = torch.nn.functional.pad(x.detach(), (0, 1)).reshape(-1, 2, 4)
    rebuilt = ((sub @ v).unsqueeze(-1) * v).reshape(-1, 8)[:, :7] * 1.5
    torch.testing.assert_close(A.grad, G.reshape(-1, 5).t() @ rebuilt)
    torch.testing.assert_close(x.grad, G @ A.detach())


def test_velora_scale_multiplies_only_A_gradient():
    gA1 = _grads("velora=true, velora_groups=2")[2]
    gA3 = _grads("velora=true, velora_groups=2, velora_scale=3")[2]
    torch.testing.assert_close(gA3, 3 * gA1)


@pytest.mark.parametrize(
    "init, changes",
    [("batch_average", [True, True]), ("batch_average_once", [True, False]), ("random", [False, False])],
)
def test_velora_projection_updates_as_its_init_says(init, changes):
    model = _mlp()
    att = studio.attach(
        model,
        f"(LoRA.adapt_output, r=4, velora=true, velora_groups=2, velora_init={init}): "
        f"...->(0){{inout1}}->...",
    )
    lora = _lora(att)
    start = lora.lora_velora_embed.clone()
    assert bool(start.abs().sum() > 0) == (init == "random")  # zeros until the first training batch
    model(X)  # eval: no update
    assert torch.equal(lora.lora_velora_embed, start)
    model.train()
    seen = [start]
    for step in range(2):
        model(X * (step + 1) + step).sum().backward()
        seen.append(lora.lora_velora_embed.clone())
    assert [not torch.equal(a, b) for a, b in zip(seen, seen[1:])] == changes
    with torch.no_grad():  # no gradient: plain LoRA, no update
        model(X + 5)
    assert torch.equal(lora.lora_velora_embed, seen[-1])


def test_kasa_truncates_the_base_adds_a_diagonal_and_detach_restores():
    model = _mlp()
    before = _state(model)
    att = studio.attach(
        model,
        "(LoRA.adapt_output, r=4, alpha=8, kasa=true, kasa_beta=0.5, kasa_gamma=0.25): ...->(0){inout1}->...",
    )
    lora = _lora(att)
    W = before["0.weight"]
    S = torch.linalg.svdvals(W)
    assert torch.linalg.matrix_rank(model[0].weight).item() == 10 - 4
    torch.testing.assert_close(torch.linalg.svdvals(model[0].weight)[:6], S[:6], rtol=1e-5, atol=1e-5)
    _perturb(att)
    delta = 2.0 * lora.lora_B @ torch.diag(lora.lora_diag) @ lora.lora_A
    torch.testing.assert_close(
        model(X),
        nn.functional.linear(X, model[0].weight + delta, model[0].bias).relu() @ model[2].weight.t()
        + model[2].bias,
    )
    eye = torch.eye(4)
    want = 0.5 * lora.lora_diag.square().sum() + 0.25 * (
        torch.linalg.norm(lora.lora_B.t() @ lora.lora_B - eye)
        + torch.linalg.norm(lora.lora_A @ lora.lora_A.t() - eye)
    )
    torch.testing.assert_close(lora.kasa_loss(), want)
    lora.kasa_loss().backward()
    assert lora.lora_diag.grad is not None and lora.lora_A.grad is not None
    out = model(X)
    truncated = model[0].weight.clone()
    att.merge()
    torch.testing.assert_close(model[0].weight, truncated + delta)
    torch.testing.assert_close(model(X), out, rtol=1e-5, atol=1e-6)
    att.unmerge()
    assert torch.equal(model[0].weight, truncated)
    att.detach()
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())


def test_kasa_loss_is_zero_without_kasa():
    model = _mlp()
    with studio.attach(model, "(LoRA.adapt_output, r=4): ...->(0){inout1}->...") as att:
        assert _lora(att).kasa_loss().item() == 0.0


def test_mica_trains_A_only_from_the_minor_singular_vectors():
    model = _mlp()
    before = _state(model)
    att = studio.attach(model, "(LoRA.adapt_output, r=3, init=mica): ...->(0){inout1}->...")
    lora = _lora(att)
    U = torch.linalg.svd(before["0.weight"], full_matrices=False)[0]
    torch.testing.assert_close(lora.lora_B, U[:, -3:])
    assert torch.equal(lora.lora_A, torch.zeros(3, 10))
    assert not lora.lora_B.requires_grad and lora.lora_A.requires_grad
    assert studio.count_parameters(model)[0] == 3 * 10
    out = model(X)
    assert torch.equal(out, nn.Sequential(*[m for m in model])(X))
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    B = lora.lora_B.clone()
    model(X).square().sum().backward()
    opt.step()
    assert torch.equal(lora.lora_B, B) and lora.lora_A.abs().sum() > 0
    att.detach()
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())


@pytest.mark.parametrize(
    "settings",
    [
        "velora=true, velora_groups=3, velora_init=random",
        "kasa=true",
        "init=mica",
        "monteclora=true, monteclora_samples=3",
    ],
)
def test_save_load_and_peft_both_ways(settings, tmp_path):
    peft = pytest.importorskip("peft")
    model = _mlp()
    att = studio.attach(model, f"(LoRA.adapt_output, r=4, alpha=8, {settings}): ...->(0){{inout1}}->...")
    _perturb(att)
    want = model(X)
    att.save(tmp_path / "a.safetensors")
    att.export_peft(tmp_path / "peft")
    fields = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    expected = {
        "velora=true, velora_groups=3, velora_init=random": (
            "velora_config",
            {"init_type": "random", "num_groups": 3, "scale": 1.0},
        ),
        "kasa=true": ("kasa_config", {"beta": 1e-4, "gamma": 1e-3}),
        "init=mica": ("init_lora_weights", "mica"),
        "monteclora=true, monteclora_samples=3": (
            "monteclora_config",
            {
                "buffer_size": 150,
                "dirichlet_prior": 0.1,
                "kl_loss_weight": 1e-5,
                "num_samples": 3,
                "sample_scaler": 1e-4,
                "use_entropy": False,
            },
        ),
    }
    field, value = expected[settings]
    assert fields[field] == value
    att.detach()
    fresh = _mlp()
    loaded = studio.load(fresh, tmp_path / "a.safetensors")
    torch.testing.assert_close(fresh(X), want)
    assert {k: v.shape for k, v in _lora(loaded).state_dict().items()} == {
        k: v.shape for k, v in _lora(att).state_dict().items()
    }
    loaded.detach()
    pm = peft.PeftModel.from_pretrained(_mlp(), str(tmp_path / "peft"))
    torch.testing.assert_close(pm(X), want, rtol=1e-5, atol=1e-6)
    back = _mlp()
    studio.from_peft(back, tmp_path / "peft")
    torch.testing.assert_close(back(X), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "where, settings, message",
    [
        ("0", "velora=true, dora=true", "LoRA dora=true cannot be combined with velora=true"),
        ("0", "kasa=true, init=mica", "LoRA kasa=true cannot be combined with init=mica"),
        ("0", "velora=true, bias=true", "LoRA bias=true cannot be combined with velora=true"),
        ("0", "velora=true, velora_groups=0", "LoRA velora_groups must be a positive integer, got 0"),
        ("0", "velora=true, velora_scale=-1", "LoRA velora_scale must be a positive number, got -1"),
        ("0", "kasa=true, kasa_gamma=-1", "LoRA kasa_gamma must be a non-negative number, got -1"),
        ("0", "kasa=yes", "LoRA: setting 'kasa' must be bool, got str 'yes'"),
        ("2", "r=3, kasa=true", "LoRA kasa=true needs r < 3 (the smaller side of the (3, 20) weight)"),
        (
            "2",
            "r=4, init=mica",
            "LoRA init=mica needs r <= 3 (the smaller side of the (3, 20) weight), got r=4",
        ),
    ],
)
def test_bad_settings_are_refused_and_leave_the_model_untouched(where, settings, message):
    model = _mlp()
    before = _state(model)
    with pytest.raises(studio.ConfigError) as info:
        studio.attach(model, f"(LoRA.adapt_output, {settings}): ...->({where}){{inout1}}->...")
    assert message in str(info.value)
    assert not hasattr(model, "addins")
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())
    assert all(p.requires_grad for p in model.parameters())


def test_variants_refused_on_layers_peft_does_not_have_them_on():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    x = torch.randn(1, 3, 4, 4)
    for settings, message in [
        (
            "velora=true",
            "LoRA velora=true works on nn.Linear and transformers Conv1D layers (as PEFT's "
            "VeLoRA), not on Conv2d",
        ),
        ("kasa=true", "LoRA kasa=true works on nn.Linear weights (as PEFT's KaSA), not on Conv2d"),
        (
            "init=mica",
            "LoRA init=mica works on Linear, Embedding and transformers Conv1D layers "
            "(as PEFT's MiCA), not on Conv2d",
        ),
    ]:
        with pytest.raises(studio.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            studio.attach(
                conv, f"(LoRA.adapt_output, r=2, {settings}): ...->(0){{inout1}}->...", example_input=x
            )
    with pytest.raises(studio.ConfigError, match="velora=true acts on the LoRA branch in training"):
        studio.attach(conv, "(LoRA.adapt_weight, r=2, velora=true): ...->(2){inout1}->...", example_input=x)


def test_mica_on_an_embedding_matches_the_transposed_weight():
    model = nn.Sequential(nn.Embedding(12, 5))
    with studio.attach(
        model, "(LoRA.adapt_output, r=2, init=mica): ...->(0){inout1}->...", example_input=torch.arange(4)
    ) as att:
        U = torch.linalg.svd(model[0].weight.t(), full_matrices=False)[0]
        torch.testing.assert_close(_lora(att).lora_B, U[:, -2:])


def test_from_peft_refuses_a_malformed_velora_config(tmp_path):
    model = _mlp()
    att = studio.attach(
        model, "(LoRA.adapt_output, r=4, velora=true, velora_groups=2): ...->(0){inout1}->..."
    )
    att.export_peft(tmp_path)
    att.detach()
    path = tmp_path / "adapter_config.json"
    config = json.loads(path.read_text())
    config["velora_config"]["num_groups"] = "two"
    path.write_text(json.dumps(config))
    before = _state(model)
    with pytest.raises(ValueError, match=r"field 'velora_config.num_groups' must be an integer, got 'two'"):
        studio.from_peft(model, tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())


def test_monteclora_is_plain_lora_in_eval_and_its_loss_is_peft_s():
    peft = pytest.importorskip("peft")
    from peft_compare import peft_buffers, peft_tensors, our_buffers, our_tensors, share_noise

    config = peft.LoraConfig(
        target_modules=["0"],
        r=4,
        lora_alpha=8,
        monteclora_config=peft.MontecloraConfig(
            num_samples=3, use_entropy=True, sample_scaler=0.05, kl_loss_weight=0.5
        ),
    )
    pm = peft.get_peft_model(_mlp(), config)
    model = _mlp()
    att = studio.attach(
        model,
        "(LoRA.adapt_output, r=4, alpha=8, monteclora=true, monteclora_samples=3, "
        "monteclora_entropy=true, monteclora_scaler=0.05, monteclora_kl=0.5): "
        "...->(0){inout1}->...",
    )
    theirs, mine = peft_tensors(pm), our_tensors(att)
    assert set(theirs) == set(mine) and len(mine) == 4  # A, B, std_prior, expert_weights_prior
    with torch.no_grad():
        for key, p in theirs.items():
            p.add_(0.1)
            mine[key].copy_(p)
        for key, b in peft_buffers(pm).items():
            our_buffers(att)[key].copy_(b)
    lora = _lora(att)
    eval_out = model(X)
    with torch.no_grad():
        plain = nn.functional.linear(X, model[0].weight + 2.0 * lora.lora_B @ lora.lora_A, model[0].bias)
    torch.testing.assert_close(eval_out, model[2](model[1](plain)))
    assert lora.monteclora_loss().item() == 0.0  # eval: no variational loss (as PEFT)
    share_noise(pm, att)
    pm.train()
    model.train()
    for step in range(2):
        out_p, out_o = pm(X), model(X)
        torch.testing.assert_close(out_o, out_p)
        assert (out_o - eval_out).abs().max() > 1e-4  # the sampled A differs from A
        loss_p = pm.base_model._get_monteclora_loss()
        loss_o = lora.monteclora_loss()
        torch.testing.assert_close(loss_o, loss_p)
        (out_p.sum() + loss_p).backward()
        (out_o.sum() + loss_o).backward()
        for key, p in theirs.items():
            torch.testing.assert_close(mine[key].grad, p.grad, rtol=1e-4, atol=1e-5)
    import copy

    copy.deepcopy(model)  # the last draw's graph does not stop a copy


def test_monteclora_files_both_ways(tmp_path):
    peft = pytest.importorskip("peft")
    model = _mlp()
    att = studio.attach(
        model,
        "(LoRA.adapt_output, r=4, alpha=8, monteclora=true, monteclora_samples=2, "
        "monteclora_buffer=4): ...->(0){inout1}->...",
    )
    _perturb(att)
    model.train()
    model(X)  # one draw: the saved gaussian_var_prior / expert_weights are the last sampled ones
    model.eval()
    want = model(X)
    att.export_peft(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["monteclora_config"] == {
        "buffer_size": 4,
        "dirichlet_prior": 0.1,
        "kl_loss_weight": 1e-5,
        "num_samples": 2,
        "sample_scaler": 1e-4,
        "use_entropy": False,
    }
    saved = dict(_lora(att).lora_monteclora.state_dict())
    att.detach()
    pm = peft.PeftModel.from_pretrained(_mlp(), str(tmp_path))
    torch.testing.assert_close(pm(X), want)
    sampler = pm.base_model.model[0].lora_monteclora_sampler["default"]
    for name, t in saved.items():
        assert torch.equal(getattr(sampler, name).detach(), t), name
    back = _mlp()
    att = studio.from_peft(back, tmp_path)
    torch.testing.assert_close(back(X), want)
    assert {
        k: torch.equal(v, saved[k]) for k, v in _lora(att).lora_monteclora.state_dict().items()
    } == dict.fromkeys(saved, True)


@pytest.mark.parametrize(
    "settings, message",
    [
        ("monteclora=true, kasa=true", "LoRA kasa=true cannot be combined with monteclora=true"),
        (
            "monteclora=true, monteclora_samples=0",
            "LoRA monteclora_samples must be a positive integer, got 0",
        ),
        ("monteclora=true, monteclora_prior=0", "LoRA monteclora_prior must be a positive number, got 0"),
    ],
)
def test_bad_monteclora_settings(settings, message):
    model = _mlp()
    with pytest.raises(studio.ConfigError, match=message):
        studio.attach(model, f"(LoRA.adapt_output, {settings}): ...->(0){{inout1}}->...")
    assert not hasattr(model, "addins")


def test_named_adapters_refuse_kasa_and_keep_the_base():
    model = _mlp()
    before, want = _state(model), model(X)
    named = studio.NamedAdapters(model)
    with pytest.raises(
        ValueError,
        match=r"moves part of the base weight into the adapter "
        r"\(init=pissa/olora or kasa=true\)",
    ):
        named.add("k", "(LoRA.adapt_output, r=4, kasa=true): ...->(0){inout1}->...")
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())
    named.add("v", "(LoRA.adapt_output, r=4, velora=true, velora_groups=2): ...->(0){inout1}->...")
    assert torch.equal(model(X), want)  # B is zero: the identity
    assert named.active == "v"


@pytest.mark.parametrize(
    "target, fields, ours",
    [
        (
            "conv1d",
            {"velora_config": {"num_groups": 2, "init_type": "batch_average"}},
            "velora=true, velora_groups=2",
        ),
        ("conv1d", {"init_lora_weights": "mica", "r": 1}, "init=mica"),
        ("emb", {"init_lora_weights": "mica", "r": 4}, "init=mica"),
        (
            "conv1d",
            {"monteclora_config": {"num_samples": 2, "sample_scaler": 0.1}},
            "monteclora=true, monteclora_samples=2, monteclora_scaler=0.1",
        ),
    ],
)
def test_variants_on_transformers_conv1d_and_embedding_equal_peft(target, fields, ours):
    """Beyond the matrix: the same variants on GPT-2's Conv1D (weight stored [in, out]) and nn.Embedding,
    in eval and over training steps."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from peft_compare import compare
    from test_peft_matrix import X as IDS, _make

    fields = {"r": 8, **fields}
    r = fields["r"]
    config = peft.LoraConfig(target_modules=[target], lora_alpha=8, **fields)
    compare(
        _make("EmbConv1D"),
        IDS,
        config,
        f"(LoRA.adapt_output, r={r}, alpha=8, {ours}): ...->({target}){{inout1}}->...",
        train_steps=3,
    )


def test_export_refuses_mixed_variants_naming_them(tmp_path):
    model = _mlp()
    att = studio.attach(
        model,
        "(LoRA.adapt_output, r=2, velora=true, velora_groups=2): "
        "...->(0){inout1}->...\n"
        "(LoRA.adapt_output, r=2): ...->(2){inout1}->...",
    )
    with pytest.raises(ValueError) as info:
        att.export_peft(tmp_path)
    assert str(info.value) == (
        "PEFT has one velora_config per adapter; these LoRAs mix "
        "[{'init_type': 'batch_average', 'num_groups': 2, 'scale': 1.0}, None]"
    )
    assert not (tmp_path / "adapter_config.json").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("kasa_config", [1], "field 'kasa_config' must be a JSON object, got list"),
        (
            "kasa_config",
            {"beta": 1, "delta": 2},
            "field 'kasa_config' has 'delta', which is not supported (beta, gamma)",
        ),
        (
            "monteclora_config",
            {"use_entropy": 1},
            "field 'monteclora_config.use_entropy' must be true or false, got 1",
        ),
        ("velora_config", {"scale": True}, "field 'velora_config.scale' must be a number, got True"),
        ("velora_config", {"scale": -2}, "LoRA velora_scale must be a positive number, got -2"),
    ],
)
def test_from_peft_names_a_bad_variant_field(field, value, message, tmp_path):
    model = _mlp()
    settings = ", velora=true, velora_groups=2" if field == "velora_config" else ""
    att = studio.attach(model, f"(LoRA.adapt_output, r=4{settings}): ...->(0){{inout1}}->...")
    att.export_peft(tmp_path)
    att.detach()
    path = tmp_path / "adapter_config.json"
    config = json.loads(path.read_text())
    config[field] = {**config[field], **value} if isinstance(config[field], dict) else value
    path.write_text(json.dumps(config))
    before = _state(model)
    with pytest.raises(ValueError) as info:
        studio.from_peft(model, tmp_path)
    assert message in str(info.value)
    assert not hasattr(model, "addins")
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())
