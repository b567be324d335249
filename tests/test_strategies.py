"""GIFt-style strategies: capability semantics, ready-made strategies, the resnet18 figure."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import addin_studio as studio
from addin_studio.strategies import Claim, ModuleCap, ParamCap, Strategy, placement


def _lora_count(model: nn.Module, r: int) -> int:
    """r * (h + w) per Linear/Conv, with the balanced factorization, computed from weight shapes."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear):
            continue
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            out, in_g, *k = m.weight.shape
            if not k or len(k) == 1:
                h, w = out, in_g * (k[0] if k else 1)
            else:
                h, w = out * k[0], in_g * math.prod(k[1:])
            total += r * (h + w)
    return total


def test_resnet18_gift_figure(capsys):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None)
    assert studio.count_parameters(model) == (11_689_512, 11_689_512)
    cfg = studio.strategies.lora_all(model, r=3)
    assert len(cfg.placements) == 21  # 20 convs + fc
    assert cfg.trainable == ()  # 75,063 is LoRA alone: no bias (fc's included) stays trainable
    with studio.attach(model, cfg, example_input=torch.randn(1, 3, 32, 32)):
        table = studio.trainable_table(model)
        print(table)
        assert studio.count_parameters(model)[0] == 75_063 == _lora_count(model, 3)
        assert re.search(r"addins\.LoRA_fc\.lora_B +\| LoRA +\| 1000x3 +\| +3,000 \|", table)
        assert table.splitlines()[-1].startswith("Trainable/total parameters: 0.08M / 11.76M")
    assert studio.count_parameters(model) == (11_689_512, 11_689_512)
    assert "4,608" in capsys.readouterr().out  # the table was printed


@pytest.mark.parametrize(
    "name", ["mobilenetv3_small_050", "efficientnet_b0", "vit_tiny_patch16_224", "convnext_atto"]
)
def test_lora_all_counts_match_shapes_on_timm_models(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7)
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    if name != "vit_tiny_patch16_224":
        assert grouped  # depthwise convs are part of what is counted
    with studio.attach(model, studio.strategies.lora_all(model, r=2)):
        assert studio.count_parameters(model)[0] == _lora_count(model, 2)


def test_lora_targets_suffix_and_regex():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8)
    cfg = studio.strategies.lora(model, targets=["qkv"], r=8, alpha=16, trainable=["head"])
    assert [p.target.module for p in cfg.placements] == [f"blocks.{i}.attn.qkv" for i in range(12)]
    assert all(p.settings == {"r": 8, "alpha": 16} for p in cfg.placements)
    assert str(cfg) == (
        "(LoRA.adapt_output, alpha=16, r=8): ...->(blocks[0:12].attn.qkv){inout1}->...\ntrainable(head)"
    )
    regex = studio.strategies.lora(model, targets=r"blocks\.[01]\.mlp\.fc\d", r=4)
    assert [p.target.module for p in regex.placements] == [
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
        "blocks.1.mlp.fc1",
        "blocks.1.mlp.fc2",
    ]
    # "attn.qkv" is a suffix too; "kv" is not a whole name, so it matches nothing
    assert len(studio.strategies.lora(model, targets=["attn.qkv"]).placements) == 12
    with pytest.raises(ValueError, match="target 'kv' matches no Linear/Conv layer"):
        studio.strategies.lora(model, targets=["qkv", "kv"])
    with pytest.raises(ValueError, match="match no Linear/Conv layer of VisionTransformer"):
        studio.strategies.lora(model, targets=["norm1"])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        studio.strategies.lora(model, targets="blocks[")


def test_bitfit_head_only_full():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3, bias=False))
    cfg = studio.strategies.bitfit(model)
    assert str(cfg) == "trainable(*.bias)"
    with studio.attach(model, cfg):
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {"0.bias", "1.bias"}
    cfg = studio.strategies.head_only(model)
    assert cfg.trainable == ("2",)  # the last Linear when there is no head/fc/classifier
    assert studio.strategies.head_only(model, head="1").trainable == ("1",)
    with studio.attach(model, studio.strategies.full(model)):
        assert studio.count_parameters(model)[0] == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="no module 'nope'"):
        studio.strategies.head_only(model, head="nope")
    with pytest.raises(ValueError, match="no bias parameters"):
        studio.strategies.bitfit(nn.Linear(3, 3, bias=False))


def test_head_only_finds_timm_and_torchvision_heads():
    timm = pytest.importorskip("timm")
    torchvision = pytest.importorskip("torchvision")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8)
    assert str(studio.strategies.head_only(vit)) == "trainable(head)"
    assert str(studio.strategies.head_only(torchvision.models.resnet18(weights=None))) == "trainable(fc)"


def test_first_match_wins_and_unmatched_parameters_are_frozen():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.LayerNorm(2))
    strategy = Strategy(
        module_caps=[
            ModuleCap(lambda i: i.path == "1", lambda i: Claim((), ("1.0.weight",))),
            ModuleCap(
                lambda i: isinstance(i.module, nn.Linear), lambda i: Claim((placement(i.path, "LoRA", r=1),))
            ),
        ],
        param_caps=[
            ParamCap(lambda p: p.name == "weight", False),  # first match: freeze weights
            ParamCap(lambda p: True, True),
        ],
    )
    cfg = strategy(model)
    # "1" is claimed by the first cap, so its Linear child gets no LoRA from the second
    assert [p.target.module for p in cfg.placements] == ["0"]
    assert cfg.trainable == ("1.0.weight", "2.bias")
    with studio.attach(model, cfg):
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {
            "1.0.weight",
            "2.bias",
            "addins.LoRA_0.lora_A",
            "addins.LoRA_0.lora_B",
        }


def test_constraint_type_and_merging_strategies():
    only_seq = Strategy(
        name="seq",
        constraint_type=nn.Sequential,
        param_caps=[ParamCap(lambda p: p.name == "bias", True, "*.bias")],
    )
    with pytest.raises(TypeError, match="seq applies to Sequential models, not Linear"):
        only_seq(nn.Linear(2, 2))
    both = only_seq + studio.strategies.lora_all_strategy(r=1)
    cfg = both(nn.Sequential(nn.Linear(2, 2), nn.Conv1d(2, 2, 1)))
    assert len(cfg.placements) == 2 and cfg.trainable == ()  # claimed modules' biases are frozen
    cfg = studio.strategies.lora_all_strategy(r=1, train_bias=True)(nn.Sequential(nn.Linear(2, 2)))
    assert cfg.trainable == ("0.bias",)


def test_strategy_results_round_trip_as_strings():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None)
    for cfg in (
        studio.strategies.lora_all(model, r=3, alpha=6),
        studio.strategies.bitfit(model),
        studio.strategies.head_only(model),
        studio.strategies.full(model),
        studio.strategies.lora(model, ["fc", "conv1"], r=2),
    ):
        assert studio.parse(str(cfg)) == cfg
