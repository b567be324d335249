"""IA3, Convpass and the LayerNorm-tuning / partial-k strategies: identity at attach, training moves only
their parameters, save/load on a fresh model, exact detach; IA3 equals PEFT on identical weights."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import addin_studio as studio
from addin_studio import ConfigError


class KVNet(nn.Module):
    """Attention-like projections and an MLP, named as PEFT's IA3 examples name them."""

    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Linear(8, 8)
        self.v = nn.Linear(8, 8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.k(x) * torch.sigmoid(self.v(x))
        return self.fc2(torch.relu(self.fc1(h)))


IA3_CONFIG = (
    "(IA3.adapt_output): ...->(k){inout}->...\n(IA3.adapt_output): ...->(v){inout}->...\n"
    "(IA3.adapt_input): ...->{inout}(fc2)->..."
)


def _vit():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=3
    ).eval(), torch.randn(2, 3, 32, 32)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_state(model, state):
    now = model.state_dict()
    assert list(now) == list(state) and all(torch.equal(now[k], state[k]) for k in state)


def _step_moves_only_addins(model, att, x):
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert base  # the base model is frozen
    addins = {n: p.detach().clone() for n, p in att.addins.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # zero-initialised branches need a second step to move their inner weights
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), f"frozen base parameter {n} moved"
    moved = [n for n, p in att.addins.named_parameters() if not torch.equal(p, addins[n])]
    assert sorted(moved) == sorted(addins), f"add-in parameters that did not move: {set(addins) - set(moved)}"


def _kvnet_and_peft_ia3():
    """KVNet, an input, and PEFT's IA3 (random vectors) on a copy: keys, values, fc2's input."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model, x = KVNet(), torch.randn(5, 8)
    theirs = peft.get_peft_model(
        copy.deepcopy(model),
        peft.IA3Config(target_modules=["k", "v", "fc2"], feedforward_modules=["fc2"], init_ia3_weights=False),
    )
    return model, x, theirs


def test_ia3_equals_peft_on_identical_weights_and_merges_exactly(digits_batch):
    ours_model, x, theirs = _kvnet_and_peft_ia3()
    before = _state(ours_model)
    att = studio.attach(ours_model, IA3_CONFIG, example_input=x)
    assert str(att.config) == IA3_CONFIG.replace("{inout}", "{inout1}")
    with torch.no_grad():
        for _, p, addin in att.entries:
            addin.ia3_l.copy_(
                theirs.get_submodule(f"base_model.model.{p.target.module}").ia3_l["default"].flatten()
            )
    torch.testing.assert_close(ours_model(x), theirs(x), rtol=0, atol=1e-6)
    out = ours_model(x)
    att.merge()
    torch.testing.assert_close(ours_model(x), out, rtol=1e-5, atol=1e-6)
    att.unmerge()
    att.detach()
    _assert_state(ours_model, before)


def test_ia3_on_a_fused_qkv_scales_keys_and_values_only():
    vit, x = _vit()
    with pytest.raises(ConfigError, match="IA3 skip must be a whole number in \\[0, 576\\)"):
        studio.attach(
            vit, "(IA3.adapt_output, skip=576): ...->(blocks[0].attn.qkv){inout}->...", example_input=x
        )
    att = studio.attach(
        vit, "(IA3.adapt_output, skip=192): ...->(blocks[0].attn.qkv){inout}->...", example_input=x
    )
    addin = att.addins["IA3_blocks_0_attn_qkv"]
    assert addin.ia3_l.shape == (384,)
    qkv = vit.blocks[0].attn.qkv
    h = torch.randn(1, 4, 192)
    with torch.no_grad():
        addin.ia3_l.fill_(2.0)
        out = addin.adapt_output(qkv, (h,), qkv(h))
        plain = qkv(h)
    assert torch.equal(out[..., :192], plain[..., :192])
    assert torch.allclose(out[..., 192:], 2 * plain[..., 192:])
    att.detach()


@pytest.mark.parametrize(
    "config",
    [
        IA3_CONFIG,
        "(Convpass.adapt_across_output, bottleneck=4): ...->{in}(blocks[0:2].attn){out}->...\n"
        "trainable(head)",
        "(Convpass.adapt_across_input): ...->{in1}(blocks[0].norm2)->...->{out1}(blocks[1])->...",
    ],
)
def test_new_addins_identity_train_save_load_detach(tmp_path, config):
    model, x = (KVNet(), torch.randn(3, 8)) if config == IA3_CONFIG else _vit()
    fresh = copy.deepcopy(model)  # the untrained model the file is loaded into
    before, y0 = _state(model), model(x).detach()
    att = studio.attach(model, config, example_input=x)
    assert torch.equal(model(x), y0)  # an identity at attach
    model.train()
    _step_moves_only_addins(model, att, x)
    model.eval()
    y1 = model(x).detach()
    assert not torch.equal(y1, y0)
    att.save(tmp_path / "a.safetensors")
    kept = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("addins.")}
    att.detach()
    _assert_state(model, {k: (model.state_dict()[k] if k in kept else v) for k, v in before.items()})
    loaded = studio.load(fresh, tmp_path / "a.safetensors", example_input=x)
    torch.testing.assert_close(fresh(x), y1, rtol=0, atol=0)
    loaded.detach()


def test_convpass_places_only_where_tokens_form_a_grid():
    vit, x = _vit()
    with pytest.raises(ConfigError, match="Convpass works on token sequences"):
        studio.attach(
            vit, "(Convpass.adapt_across_output): ...->{in}(patch_embed.proj){out}->...", example_input=x
        )
    with pytest.raises(ConfigError, match="set prefix= to the number of class/register tokens"):
        studio.attach(
            vit,
            "(Convpass.adapt_across_output, prefix=0): ...->{in}(blocks[0].attn){out}->...",
            example_input=x,
        )


def test_layernorm_tuning_trains_norms_and_head_only():
    vit, x = _vit()
    cfg = studio.strategies.layernorm(vit)
    assert str(cfg) == "trainable(blocks[0:2].norm1, blocks[0:2].norm2, norm, head)"
    with studio.attach(vit, cfg, example_input=x):
        names = {n for n, p in vit.named_parameters() if p.requires_grad}
        want = {
            n
            for n, m in vit.named_modules()
            if isinstance(m, nn.LayerNorm)
            for n in (f"{n}.weight", f"{n}.bias")
        } | {"head.weight", "head.bias"}
        assert names == want
    assert all(p.requires_grad for p in vit.parameters())
    assert (
        str(studio.strategies.layernorm(vit, head=None))
        == "trainable(blocks[0:2].norm1, blocks[0:2].norm2, norm)"
    )
    with pytest.raises(ValueError, match="no normalization layer"):
        studio.strategies.layernorm(KVNet())


def test_partial_k_trains_the_last_blocks_and_what_follows():
    import torchvision

    vit, x = _vit()
    assert str(studio.strategies.partial_k(vit, 1)) == "trainable(blocks[1], norm, head)"
    assert str(studio.strategies.partial_k(vit, 2, head=False)) == "trainable(blocks[0:2])"
    resnet = torchvision.models.resnet18()
    assert str(studio.strategies.partial_k(resnet, 1)) == "trainable(layer4[1], fc)"
    cfg = studio.strategies.partial_k(vit, 1)
    with studio.attach(vit, cfg, example_input=x):
        trainable, _ = studio.count_parameters(vit)
        want = sum(p.numel() for m in (vit.blocks[1], vit.norm, vit.head) for p in m.parameters())
        assert trainable == want
    with pytest.raises(ValueError, match="k=3 but 'blocks' has only 2 blocks"):
        studio.strategies.partial_k(vit, 3)
    with pytest.raises(ValueError, match="'head' is not a list of repeated blocks"):
        studio.strategies.partial_k(vit, 1, blocks="head")


def test_ia3_peft_directories_both_ways(tmp_path):
    peft = pytest.importorskip("peft")
    base, x, theirs = _kvnet_and_peft_ia3()
    theirs.save_pretrained(str(tmp_path / "theirs"))
    model = copy.deepcopy(base)
    before = _state(model)
    att = studio.from_peft(model, tmp_path / "theirs")
    assert str(att.config) == IA3_CONFIG.replace("{inout}", "{inout1}")
    torch.testing.assert_close(model(x), theirs(x), rtol=0, atol=1e-6)
    att.export_peft(tmp_path / "ours")
    back = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(back(x), theirs(x), rtol=0, atol=1e-6)
    att.detach()
    _assert_state(model, before)
    # what PEFT's IA3 cannot hold is refused by name, the model untouched
    vit, xv = _vit()
    with studio.attach(
        vit, "(IA3.adapt_output, skip=192): ...->(blocks[0].attn.qkv){inout}->...", example_input=xv
    ) as att:
        with pytest.raises(ValueError, match="'IA3_blocks_0_attn_qkv' is IA3.adapt_output with skip=192"):
            att.export_peft(tmp_path / "skip")
    cfg_path = tmp_path / "theirs" / "adapter_config.json"
    import json

    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "feedforward_modules": ["k", "v", "fc2"]}))
    with pytest.raises(
        ValueError,
        match=r"tensor 'k.ia3_l' has shape \(8, 1\); scaling a feedforward "
        r"module's input needs \(1, 8\)",
    ):
        studio.from_peft(model, tmp_path / "theirs")
    _assert_state(model, before)
