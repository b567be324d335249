"""Modules shared under several names: one canonical name per module object (the first
``named_modules()`` gives) in the trace, the strategies, the resolver, the widget and the files; the
other names resolve to it with a warning; an add-in on a shared module runs wherever the module runs."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import addin_studio as studio
from addin_studio.config import ConfigError
from addin_studio import SharedModuleWarning
from addin_studio.graph import canonical_path, module_aliases
from addin_studio.params import trainable_table

try:  # the zoo's checker (identity, one step, merge/unmerge, exact detach)
    from zoo_check import run_zoo_model  # type: ignore[import-not-found]
except ImportError:
    from test_zoo import run_zoo_model


class Block(nn.Module):
    def __init__(self, shared: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.shared = shared

    def forward(self, x):
        return self.shared(torch.relu(self.fc(x)))


class Toy(nn.Module):
    """``proj`` is also ``blocks.0.shared``, ``blocks.1.shared`` (called by both blocks) and
    ``deep.0.0`` (two levels down, never called from there)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([Block(self.proj), Block(self.proj)])
        self.deep = nn.Sequential(nn.Sequential(self.proj))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class ConvBlock(nn.Module):
    def __init__(self, cpe: nn.Module) -> None:
        super().__init__()
        self.cpe = cpe
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.conv(x + self.cpe(x))


class ConvToy(nn.Module):
    """CoaT's pattern: a depthwise conv owned by the model (``cpe``), called by every block."""

    def __init__(self) -> None:
        super().__init__()
        self.cpe = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.blocks = nn.Sequential(ConvBlock(self.cpe), ConvBlock(self.cpe))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.blocks(x).mean((2, 3)))


X = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
ALIASES = {"blocks.0.shared": "proj", "blocks.1.shared": "proj", "deep.0.0": "proj"}


def _toy() -> Toy:
    torch.manual_seed(0)
    return Toy().eval()


def test_aliases_map_every_other_name_to_the_first_named_modules_gives():
    model = _toy()
    assert module_aliases(model) == ALIASES
    assert [n for n, _ in model.named_modules()][:2] == ["", "proj"]
    assert canonical_path("blocks.1.shared.weight", ALIASES) == "proj.weight"
    assert canonical_path("blocks.1.fc", ALIASES) == "blocks.1.fc"
    cpe = ConvToy()
    assert module_aliases(cpe) == {"blocks.0.cpe": "cpe", "blocks.1.cpe": "cpe"}
    assert module_aliases(nn.Sequential(nn.Linear(2, 2))) == {}


def test_same_object_under_two_names_in_one_parent_and_its_subtree():
    inner = nn.Sequential(nn.Linear(2, 2))
    model = nn.Module()
    model.a = inner
    model.b = inner
    assert module_aliases(model) == {"b": "a", "b.0": "a.0"}


def test_trace_has_one_node_per_module_object_with_aliases_and_all_calls_counted():
    model = _toy()
    graph = studio.trace(model, X)
    assert graph.paths == [
        "proj",
        "blocks",
        "blocks.0",
        "blocks.0.fc",
        "blocks.1",
        "blocks.1.fc",
        "deep",
        "deep.0",
        "head",
    ]
    node = graph["proj"]
    assert node.aliases == ["blocks.0.shared", "blocks.1.shared", "deep.0.0"]
    assert graph["blocks.0.shared"] is node and "deep.0.0" in graph
    assert graph.canonical("blocks.1.shared") == "proj" and graph.aliases == ALIASES
    assert node.calls == 2 and graph["blocks.0.fc"].calls == 1 and graph["deep"].calls == 0
    # order and shapes are those of the first call (inside blocks.0, after blocks.0.fc)
    assert [n.path for n in graph.executed()] == [
        "blocks.0",
        "blocks.0.fc",
        "proj",
        "blocks.1",
        "blocks.1.fc",
        "head",
    ]
    assert node.input_shape == (4, 8) and node.output_shape == (4, 8)
    # parameters counted once in the model's total; a parent counts what it computes with
    assert graph.num_params == 3 * 72 + 27 == sum(p.numel() for p in model.parameters())
    assert graph["blocks.0"].num_params == 144 and graph["deep"].num_params == 72


def test_lora_all_places_one_lora_per_object_under_its_canonical_name():
    model = _toy()
    cfg = studio.strategies.lora_all(model, r=2, example_input=X)
    assert [p.target.module for p in cfg.placements] == ["proj", "blocks.0.fc", "blocks.1.fc", "head"]
    assert "(proj){inout1}" in str(cfg) and "shared" not in str(cfg)
    seen = []
    strategy = studio.strategies.Strategy().register_module_cap(
        lambda info: isinstance(info.module, nn.Linear),
        lambda info: seen.append((info.path, info.aliases)) or studio.strategies.Claim(),
    )
    strategy(model)
    assert seen[0] == ("proj", ("blocks.0.shared", "blocks.1.shared", "deep.0.0"))
    assert [s[0] for s in seen] == ["proj", "blocks.0.fc", "blocks.1.fc", "head"]


@pytest.mark.usefixtures("one_thread")
def test_a_lora_on_a_shared_module_runs_at_every_call_and_merges_exactly():
    model = _toy()
    params = {n: p for n, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a strategy's config names no alias: no warning
        att = studio.attach(model, studio.strategies.lora_all(model, r=2, example_input=X), example_input=X)
    assert list(att.addins) == ["LoRA_proj", "LoRA_blocks_0_fc", "LoRA_blocks_1_fc", "LoRA_head"]
    assert {n: p for n, p in model.named_parameters() if not n.startswith("addins.")} == params  # no meta
    assert len(model.proj._forward_hooks) == 1

    def adapted(layer: nn.Linear, key: str, x: torch.Tensor) -> torch.Tensor:
        lora = att.addins[key]
        return F.linear(x, layer.weight, layer.bias) + (x @ lora.lora_A.T @ lora.lora_B.T) * lora.scaling

    with torch.no_grad():
        for addin in att.addins.values():
            addin.lora_B.normal_(0, 0.5)
        out = X
        for block, key in zip(model.blocks, ("LoRA_blocks_0_fc", "LoRA_blocks_1_fc")):
            out = adapted(model.proj, "LoRA_proj", torch.relu(adapted(block.fc, key, out)))  # both calls
        expected = adapted(model.head, "LoRA_head", out)
        unmerged = model(X)
        assert torch.allclose(unmerged, expected, atol=1e-5)
        att.merge()  # one weight under several names is no tie: merge folds it in once
        assert torch.allclose(model(X), unmerged, atol=1e-5)
        att.unmerge()
        assert torch.equal(model(X), unmerged)
    att.detach()
    assert all(not m._forward_hooks for m in model.modules())


def test_an_alias_in_a_config_string_is_renamed_with_a_warning():
    model = _toy()
    text = "(LoRA.adapt_output, r=2): ...->(blocks[1].shared){inout1}->...\ntrainable(deep[0][0].bias)"
    with pytest.warns(SharedModuleWarning) as record:
        att = studio.attach(model, text, example_input=X)
    messages = [str(w.message) for w in record]
    assert messages[0] == (
        "(LoRA.adapt_output) at blocks.1.shared:post: 'blocks[1].shared' is 'proj' (Linear), one module "
        "shared by several parents; also reachable as 'blocks[0].shared', 'deep[0][0]'; it is placed under "
        "its canonical name 'proj' (the first name named_modules() gives) and runs wherever that module runs"
    )
    assert "trainable(deep.0.0.bias): 'deep[0][0].bias' is 'proj.bias'" in messages[1]
    assert str(att.config) == "(LoRA.adapt_output, r=2): ...->(proj){inout1}->...\ntrainable(proj.bias)"
    assert list(att.addins) == ["LoRA_proj"]
    assert [n for n, p in model.named_parameters() if p.requires_grad and "addins" not in n] == ["proj.bias"]
    att.detach()


def test_the_same_placement_under_two_names_is_refused():
    model = _toy()
    text = (
        "(LoRA.adapt_output, r=2): ...->(proj){inout1}->...\n"
        "(LoRA.adapt_output, r=2): ...->(deep[0][0]){inout1}->..."
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(SharedModuleWarning), pytest.raises(ConfigError) as info:
        studio.attach(model, text, example_input=X)
    assert info.value.message == (
        "(LoRA.adapt_output) at deep.0.0:post and (LoRA.adapt_output) at proj:post are one placement on one "
        "module: 'proj' is shared by several parents and both names reach it, so its add-in would be "
        "attached twice"
    )
    assert info.value.hint == "place it once, at 'proj': it runs wherever the module runs"
    assert text[info.value.position :].startswith("(LoRA.adapt_output, r=2): ...->(deep")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "addins" not in dict(model.named_children())
    # two different add-ins on one shared module are fine (as on any module)
    with pytest.warns(SharedModuleWarning):
        att = studio.attach(model, text.replace("r=2): ...->(deep", "r=3): ...->(deep"), example_input=X)
    assert list(att.addins) == ["LoRA_proj", "LoRA_proj_1"]
    att.detach()


def test_a_nonexistent_child_below_an_alias_names_the_canonical_module():
    model = _toy()
    with pytest.warns(SharedModuleWarning), pytest.raises(ConfigError) as info:
        studio.attach(model, "(LoRA.adapt_output, r=2): ...->(blocks[0].shared.nope){inout1}->...")
    assert info.value.message.startswith("no module 'proj.nope' in Toy")


def test_save_and_load_use_the_canonical_name(tmp_path):
    model = _toy()
    att = studio.attach(model, studio.strategies.lora_all(model, r=2, example_input=X), example_input=X)
    with torch.no_grad():
        for addin in att.addins.values():
            addin.lora_B.normal_(0, 0.5)
        out = model(X)
    path = tmp_path / "a.safetensors"
    att.save(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["keys"]) == ["LoRA_proj", "LoRA_blocks_0_fc", "LoRA_blocks_1_fc", "LoRA_head"]
    assert json.loads(meta["placements"])[0]["target"] == "proj:post"
    att.detach()
    fresh = _toy()
    loaded = studio.load(fresh, path, example_input=X)
    with torch.no_grad():
        assert torch.equal(fresh(X), out)
    loaded.detach()


def test_peft_export_and_import_refuse_a_shared_module(tmp_path):
    model = _toy()
    att = studio.attach(model, studio.strategies.lora_all(model, r=2, example_input=X), example_input=X)
    with pytest.raises(ValueError) as info:
        att.export_peft(tmp_path / "ours")
    assert str(info.value).startswith(
        "'proj' is one Linear shared by several parents (also reachable as 'blocks.0.shared', "
        "'blocks.1.shared', 'deep.0.0'); PEFT replaces it under its first name 'proj' only"
    )
    assert not os.path.exists(tmp_path / "ours")
    att.detach()
    # a layer that is not shared exports and loads in PEFT as before
    att = studio.attach(model, studio.strategies.lora(model, ["fc", "head"], r=2), example_input=X)
    att.export_peft(tmp_path / "fc")
    att.detach()
    peft = pytest.importorskip("peft")
    # PEFT itself: it swaps the layer under its first name only; the blocks keep calling the bare one
    base = _toy()
    wrapped = peft.get_peft_model(base, peft.LoraConfig(target_modules=["proj"], r=2))
    assert base.blocks[0].shared is not base.proj
    wrapped.save_pretrained(tmp_path / "theirs")
    with pytest.raises(
        ValueError,
        match=r"adapter_config.json: the adapter targets 'proj', one module "
        r"shared by several parents \(also reachable as 'blocks.0.shared'",
    ):
        studio.from_peft(_toy(), tmp_path / "theirs")


def test_trainable_table_does_not_call_a_shared_module_a_tie():
    model = _toy()
    for p in model.parameters():
        p.requires_grad_(True)
    assert "shared by" not in trainable_table(model)
    model.head.weight = model.blocks[0].fc.weight = nn.Parameter(torch.zeros(8, 8))  # a real tie
    assert "(shared by 2)" in trainable_table(model)


def test_lora_targets_name_the_canonical_name_of_an_alias():
    with pytest.raises(ValueError) as info:
        studio.strategies.lora(_toy(), ["shared"], r=2)
    assert str(info.value) == (
        "targets ['shared'] match no Linear/Conv layer of Toy (nor an Embedding or MultiheadAttention; its "
        "layers include: proj, blocks.0.fc, blocks.1.fc, head); 'blocks.0.shared' is another name of 'proj', "
        "a module shared by several parents: targets match canonical names (the first named_modules() "
        "gives), as PEFT's do"
    )
    with pytest.raises(ValueError) as info:
        studio.strategies.lora(_toy(), ["head", "shared"], r=2)
    assert str(info.value).startswith(
        "target 'shared' matches no Linear/Conv layer of Toy (nor an Embedding "
        "or MultiheadAttention); 'blocks.0.shared' is another name of 'proj'"
    )


def test_widget_details_name_the_other_names():
    from addin_studio.widget import Studio

    w = Studio(_toy(), example_input=X)
    w.handle({"type": "select", "path": "blocks.1.shared"})
    assert w.selected["path"] == "proj" and w.selected["aliases"] == [
        "blocks[0].shared",
        "blocks[1].shared",
        "deep[0][0]",
    ]
    assert w.selected["note"] == (
        "shared module: also reachable as blocks[0].shared, blocks[1].shared, deep[0][0]; it ran 2 times in "
        "the traced pass. Add-ins placed here hook the module object, so they run wherever it runs (under "
        "every parent)"
    )
    w.handle({"type": "select", "path": "head"})
    assert w.selected["note"] == "" and w.selected["aliases"] == []
    with pytest.warns(SharedModuleWarning):  # a pasted string naming an alias shows the canonical name
        w.handle({"type": "apply", "text": "(LoRA.adapt_output, r=2): ...->(deep[0][0]){inout1}->..."})
    assert w.config == "(LoRA.adapt_output, r=2): ...->(proj){inout1}->..." and w.error == ""
    w.handle({"type": "select", "path": "proj"})
    assert w.selected["placements"] == ["(LoRA.adapt_output, r=2): ...->(proj){inout1}->..."]
    w.close()


@pytest.mark.usefixtures("one_thread")
def test_conv_shared_by_two_blocks_end_to_end():
    torch.manual_seed(0)
    r = run_zoo_model(
        ConvToy, lambda: torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1)), False
    )
    assert r["placements"] == 4 and r["adapt_weight"] == 0


def _image() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.usefixtures("one_thread")
def test_timm_coat_lite_tiny_end_to_end():
    timm = pytest.importorskip("timm")

    def build() -> nn.Module:
        return timm.create_model("coat_lite_tiny", pretrained=False, img_size=64, num_classes=8)

    model = build()
    cfg = studio.strategies.lora_all(model, r=4)
    targets = [p.target.module for p in cfg.placements]
    assert len(targets) == len(set(targets))
    assert [t for t in targets if "cpe" in t] == ["cpe1.proj", "cpe2.proj", "cpe3.proj", "cpe4.proj"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SharedModuleWarning)
        r = run_zoo_model(build, _image, False)
    assert r["placements"] == len(targets) and r["diff"] <= 1e-3 * r["effect"]


class Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.encoder = nn.Sequential(self.embed)  # the same Embedding under a second name
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.encoder(ids))


def test_from_peft_trainable_tokens_on_a_shared_embedding_names_sharing_not_a_tie(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    wrapped = peft.get_peft_model(
        Embedder(), peft.TrainableTokensConfig(target_modules=["embed"], token_indices=[1, 2])
    )
    wrapped.save_pretrained(tmp_path)
    torch.manual_seed(0)
    with pytest.raises(ValueError) as info:
        studio.from_peft(Embedder(), tmp_path)
    assert "tied" not in str(info.value)
    assert (
        "the adapter targets 'embed', one module shared by several parents (also reachable as "
        "'encoder.0')" in str(info.value)
    )
