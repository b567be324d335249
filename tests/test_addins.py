"""Built-in add-ins: registry, identity at attach on timm ViT and ConvNet, training, sizing errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import addin_studio as studio

timm = pytest.importorskip("timm")
X = torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5
    ).eval()


@pytest.fixture(scope="module")
def convnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=5).eval()


VIT_CFGS = {
    "LoRA": "(LoRA.adapt_output, r=4): ...->(blocks[0:12].attn.qkv){inout1}->...",
    "Adapter": "(Adapter.adapt_output, bottleneck=8): ...->(blocks[0:12].mlp){inout1}->...",
    "AdaptFormer": "(AdaptFormer.adapt_across_output, bottleneck=8): ...->{in1}(blocks[0:12].mlp){out1}->...",
    "SSF": "(SSF.adapt_output): ...->(blocks[0:12].norm1){inout1}->...",
}
CONV_CFGS = {
    "LoRA": "(LoRA.adapt_output, r=2): ...->(conv1){inout1}->...",  # timm zero-inits each block's last BN
    "Adapter": "(Adapter.adapt_output, bottleneck=8): ...->(layer1[0]){inout1}->...",
    "AdaptFormer": "(AdaptFormer.adapt_across_output, bottleneck=8): ...->{in1}(layer2[1]){out1}->...",
    "SSF": "(SSF.adapt_input): ...->{inout1}(layer3)->...",
}


def test_registry_lists_every_builtin():
    names = studio.available_addins()
    assert {"LoRA", "Adapter", "AdaptFormer", "SSF", "VPT", "Identity"} <= set(names)
    assert studio.methods_for(names["Adapter"], "post") == ["adapt_across_output", "adapt_output"]
    assert studio.methods_for(names["AdaptFormer"], "post") == ["adapt_across_output"]
    assert studio.methods_for(names["VPT"], "pre") == ["adapt_input"]


@pytest.mark.parametrize("name", sorted(VIT_CFGS))
@pytest.mark.parametrize("arch", ["vit", "convnet"])
def test_identity_at_attach_and_training_moves_only_addins(name, arch, request):
    model = request.getfixturevalue(arch)
    cfg = (VIT_CFGS if arch == "vit" else CONV_CFGS)[name]
    before = model(X)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    with studio.attach(model, cfg, example_input=X) as att:
        assert torch.equal(model(X), before)
        addin_names = {n for n, _ in model.named_parameters() if n.startswith("addins.")}
        assert studio.count_parameters(model)[0] == sum(p.numel() for p in att.addins.parameters())
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        start = {n: p.detach().clone() for n, p in model.named_parameters() if n in addin_names}
        for _ in range(2):  # zero-initialised up-projections let the rest move from step 2
            opt.zero_grad()
            model(X).square().mean().backward()
            opt.step()
        moved = {n for n, p in model.named_parameters() if n in addin_names and not torch.equal(p, start[n])}
        assert moved == addin_names
        assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
        assert not torch.equal(model(X), before)
    assert torch.equal(model(X), before)


def test_parameter_counts_from_widths(vit):
    with studio.attach(vit, VIT_CFGS["Adapter"], example_input=X):
        # per block: down 192x8 + 8, up 8x192 + 192
        assert studio.count_parameters(vit)[0] == 12 * (192 * 8 + 8 + 8 * 192 + 192)
    with studio.attach(vit, VIT_CFGS["SSF"], example_input=X):
        assert studio.count_parameters(vit)[0] == 12 * 2 * 192


def test_adapter_on_conv_maps_uses_channels(convnet):
    with studio.attach(convnet, CONV_CFGS["Adapter"], example_input=X) as att:
        adapter = att.addins["Adapter_layer1_0"]
        assert adapter.channel_first and adapter.down.in_features == 64


def test_vpt_shallow_and_deep(vit):
    seen = []
    handle = vit.blocks[5].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    try:
        with studio.attach(
            vit, "(VPT.adapt_input, num_tokens=3): ...->{inout1}(blocks[0])->...", example_input=X
        ) as att:
            assert att.addins["VPT_blocks_0"].prompts.shape == (3, 192)
            out = vit(X)
            assert out.shape == (2, 5) and seen[-1] == (2, 17 + 3, 192)
        with studio.attach(
            vit, "(VPT.adapt_input, num_tokens=3): ...->{inout1}(blocks[0:12])->...", example_input=X
        ) as att:
            assert studio.count_parameters(vit)[0] == 12 * 3 * 192
            vit(X).sum().backward()
            assert seen[-1] == (2, 20, 192)  # deep prompts replace, never pile up
            assert all(a.prompts.grad is not None for a in att.addins.values())
    finally:
        handle.remove()


def test_ssf_merge_folds_into_linear(vit):
    with studio.attach(
        vit, "(SSF.adapt_output): ...->(blocks[0:2].attn.qkv){inout1}->...", example_input=X
    ) as att:
        with torch.no_grad():
            for p in att.addins.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        hooked = vit(X)
        att.merge()
        assert att.merged
        torch.testing.assert_close(vit(X), hooked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("(AdaptFormer.adapt_across_output): ...->{in1}(layer2){out1}->...", "apart from the channels"),
        ("(Adapter.adapt_output, bottleneck=0): ...->(layer1){inout1}->...", "bottleneck must be a positive"),
        ("(Adapter.adapt_output, act=swish): ...->(layer1){inout1}->...", "act must be one of"),
        ("(VPT.adapt_input): ...->{inout1}(layer1)->...", "VPT works on token sequences"),
        (
            "(AdaptFormer.adapt_output): ...->(layer1){inout1}->...",
            "AdaptFormer has no method 'adapt_output'",
        ),
    ],
)
def test_bad_placements(convnet, text, needle):
    state = {k: v.clone() for k, v in convnet.state_dict().items()}
    with pytest.raises(studio.ConfigError) as info:
        studio.attach(convnet, text, example_input=X)
    assert needle in str(info.value)
    assert not hasattr(convnet, "addins")
    assert all(torch.equal(convnet.state_dict()[k], v) for k, v in state.items())


def test_shape_needs_example_input():
    with pytest.raises(studio.ConfigError, match="pass example_input= to attach"):
        studio.attach(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), "(SSF.adapt_output): ...->(1){inout1}->...")
