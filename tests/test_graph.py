"""Module graph: paths, classes, order, shapes and parameter counts from one traced forward pass."""

import timm
import torch
from torch import nn
from torchinfo import summary

from addin_studio import trace


def test_mlp_nodes_order_and_shapes(mlp, digits_batch):
    g = trace(mlp, digits_batch)
    assert g.paths == ["fc1", "fc2", "fc3"]
    assert [n.path for n in g.executed()] == ["fc1", "fc2", "fc3"]
    assert g["fc1"].input_shape == (4, 64) and g["fc1"].output_shape == (4, 32)
    assert g["fc3"].output_shape == (4, 10)
    assert g["fc2"].num_params == 32 * 32 + 32
    assert g.num_params == sum(p.numel() for p in mlp.parameters())
    assert g["fc1"].class_name == "Linear" and g["fc1"].depth == 1 and g["fc1"].is_leaf


def test_trace_restores_training_flags_and_leaves_no_hooks():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace(model, torch.randn(8, 4))
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class TwoInputsDictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 5)
        self.b = nn.Linear(7, 5)
        self.unused = nn.Linear(2, 2)

    def forward(self, x, y, scale=1.0):
        return {"sum": (self.a(x) + self.b(y)) * scale, "parts": (x, y)}


def test_several_inputs_dict_output_and_unused_module():
    m = TwoInputsDictOut()
    g = trace(m, (torch.randn(2, 3), torch.randn(2, 7)), scale=2.0)
    assert g["a"].order == 0 and g["b"].order == 1
    assert g["unused"].order is None and g["unused"].output_shape is None
    g2 = trace(m, {"x": torch.randn(2, 3), "y": torch.randn(2, 7)})
    assert g2["b"].input_shape == (2, 7)


def test_untraced_graph_has_structure_only(mlp):
    g = trace(mlp)
    assert not g.traced and g["fc1"].order is None and g["fc2"].num_params == 32 * 32 + 32


def test_meta_device_allocates_nothing():
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
    g = trace(model, torch.randn(1, 3, 224, 224))  # the input is moved to the model's device
    assert g.num_params == 86_567_656
    assert g["blocks.11.attn.qkv"].output_shape == (1, 197, 2304)
    assert g["head"].output_shape == (1, 1000)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_vit_repeated_groups_and_extra_repr():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    g = trace(model, torch.randn(1, 3, 224, 224))
    assert g.repeated_groups() == {"blocks": 12}
    assert g["blocks.0.attn.qkv"].extra_repr == "in_features=192, out_features=576, bias=True"
    assert g["blocks.3"].children[:2] == ["blocks.3.norm1", "blocks.3.attn"]
    assert g.suggest("blocks.3.atn.qkv")[0] == "blocks.3.attn.qkv"


def test_same_modules_and_counts_as_torchinfo():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    g = trace(model, x)
    stats = summary(model, input_data=x, verbose=0, depth=10)
    info = {}
    for layer in stats.summary_list:
        if layer.depth == 0:
            continue
        info.setdefault(layer.var_name, layer)
    # torchinfo lists each executed module; our graph has every named submodule
    executed = [n for n in g.executed()]
    assert len(executed) == len({id(layer.module) for layer in stats.summary_list if layer.depth > 0})
    ours_by_module = {id(dict(model.named_modules())[n.path]): n for n in executed}
    for layer in stats.summary_list:
        if layer.depth == 0:
            continue
        node = ours_by_module[id(layer.module)]
        assert node.num_params == sum(p.numel() for p in layer.module.parameters())
        assert list(node.output_shape) == list(layer.output_size)
    assert g.num_params == stats.total_params
