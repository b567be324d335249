"""Strategies without an example input warn at once, naming ``example_input=``, when an output hook they
chose sits on a layer whose parent's forward reads its weight itself (BEiT/EVA-02/torchvision Swin ``qkv``):
attach would refuse such a hook later, and only a traced forward pass tells which layers need
``adapt_weight``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import addin_studio as studio
from addin_studio.graph import parent_reads, trace


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, -1)
        return self.proj(torch.softmax(q @ k.transpose(-1, -2), -1) @ v)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x))


MESSAGE = (
    "strategies.{} got no example_input= (nor a traced graph=): it chose the output hook for "
    "'attn.qkv', but Attention.forward reads self.qkv.weight, so that layer may never run as a module "
    "and attach would refuse the hook. Pass example_input= (one input for a traced forward pass) so "
    "that the strategy gives the layers that never run adapt_weight"
)


def test_parent_reads_finds_a_weight_read_by_the_parent_without_running_the_model():
    model = Net()
    assert parent_reads(model, ["attn.qkv", "attn.proj", "head", "attn"]) == {
        "attn.qkv": "Attention.forward reads self.qkv.weight"
    }


@pytest.mark.parametrize("call", ["lora_all", "lora"])
def test_strategy_without_an_input_warns_at_once_naming_example_input(call):
    model = Net()
    with pytest.warns(UserWarning) as record:
        cfg = (
            studio.strategies.lora_all(model, r=3)
            if call == "lora_all"
            else studio.strategies.lora(model, targets=["qkv", "proj"])
        )
    assert [str(w.message) for w in record] == [MESSAGE.format(call)]
    assert {p.target.module: p.method for p in cfg.placements}["attn.qkv"] == "adapt_output"  # unchanged
    with pytest.raises(studio.ConfigError, match="'attn.qkv' did not run"):  # what the warning forestalls
        _first_forward(model, cfg)


def _first_forward(model: nn.Module, cfg: studio.Config) -> None:
    att = studio.attach(model, cfg)
    try:
        model(torch.randn(2, 4, 8))
    finally:
        att.detach()


@pytest.mark.parametrize("given", ["example_input", "graph"])
def test_strategy_with_a_trace_chooses_adapt_weight_and_does_not_warn(given):
    model = Net()
    x = torch.randn(2, 4, 8)
    kw = {"example_input": x} if given == "example_input" else {"graph": trace(model, x)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = studio.strategies.lora_all(model, r=3, **kw)
    assert {p.target.module: p.method for p in cfg.placements} == {
        "attn.qkv": "adapt_weight",
        "attn.proj": "adapt_output",
        "head": "adapt_output",
    }


def test_a_model_whose_layers_all_run_gets_no_warning():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        studio.strategies.lora_all(model, r=3)


def test_beit_without_an_input_warns_for_its_qkv():
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "beit_base_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
    )
    expected = (
        r"output hook for 'blocks\.0\.attn\.qkv' \(and 1 more layer\(s\) like it\), but "
        r"Attention\.forward reads self\.qkv\.weight.*example_input="
    )
    with pytest.warns(UserWarning, match=expected):
        studio.strategies.lora_all(model, r=3)
