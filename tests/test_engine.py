"""Hook engine: tutorial placements compute what they should, detach restores, errors change nothing."""

import copy
import io
import pickle

import pytest
import timm
import torch
from torch import nn

import addin_studio as studio
from addin_studio import AddinBase, ConfigError, attach, count_parameters
from addin_studio.examples import MLPAddin

ADDINS = {"MLPAddin": MLPAddin}
relu = torch.relu


def L(layer, x):
    """The layer's computation without its hooks (the reference must not run the add-ins)."""
    return torch.nn.functional.linear(x, layer.weight, layer.bias)


def snapshot(model):
    """Everything attach/detach must restore."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "keys": list(model.state_dict()),
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "modules": [n for n, _ in model.named_modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
    }


def assert_same(model, snap):
    now = snapshot(model)
    assert now["keys"] == snap["keys"]
    assert now["flags"] == snap["flags"]
    assert now["modules"] == snap["modules"]
    assert now["hooks"] == snap["hooks"]
    assert all(torch.equal(now["state"][k], snap["state"][k]) for k in snap["keys"])


def addin_of(att):
    (addin,) = att.addins.values()
    return addin


# Each tutorial string with a hand-written reference computation using the attached add-in `a`.
REFERENCES = [
    (
        "(MLPAddin.adapt_input): ...->{inout1}(fc2)->...",
        lambda m, a, x: L(m.fc3, relu(L(m.fc2, a(relu(L(m.fc1, x)))))),
    ),
    (
        "(MLPAddin.adapt_output): ...->(fc1){inout1}->...",
        lambda m, a, x: L(m.fc3, relu(L(m.fc2, relu(a(L(m.fc1, x)))))),
    ),
    (
        "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->...",
        lambda m, a, x: L(m.fc3, relu(L(m.fc2, relu(L(m.fc1, x)))) + a(L(m.fc1, x))),
    ),
    (
        "(MLPAddin.adapt_across_input): ...->{in1}(fc2)->{out1}(fc3)->...",
        lambda m, a, x: L(m.fc3, relu(L(m.fc2, relu(L(m.fc1, x)))) + a(relu(L(m.fc1, x)))),
    ),
    (
        "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{in2}(fc3)->...",
        lambda m, a, x: L(m.fc3, relu(L(m.fc2, relu(L(m.fc1, x)))) + a(L(m.fc1, x))),
    ),
    (
        "(MLPAddin.adapt_across_output): ...->{in1}(fc2){in2}->...",
        lambda m, a, x: L(m.fc3, relu(L(m.fc2, relu(L(m.fc1, x))) + a(relu(L(m.fc1, x))))),
    ),
    (
        "(MLPAddin.adapt_across_output): ...->(fc1){in1}->(fc2){in2}->...",
        lambda m, a, x: L(m.fc3, relu(L(m.fc2, relu(L(m.fc1, x))) + a(L(m.fc1, x)))),
    ),
]


@pytest.mark.parametrize("text,reference", REFERENCES)
def test_tutorial_strings_compute_the_reference(mlp, digits_batch, text, reference):
    x = digits_batch
    plain = mlp(x)
    snap = snapshot(mlp)
    with attach(mlp, text, ADDINS, x) as att:
        a = addin_of(att)
        with torch.no_grad():
            for p in a.parameters():  # make the add-in's effect visible
                p.normal_()
        expected = reference(mlp, a, x)
        got = mlp(x)
        assert torch.allclose(got, expected, atol=1e-5)
        assert not torch.allclose(got, plain)
        assert a.inputs_cache is None  # released after {out} ran
    assert_same(mlp, snap)
    assert torch.equal(mlp(x), plain)


def test_tutorial_adapt_input_after_a_module_is_rejected_at_attach(mlp, digits_batch):
    snap = snapshot(mlp)
    text = "(MLPAddin.adapt_input): ...->(fc2){inout1}->..."
    with pytest.raises(ConfigError) as e:
        attach(mlp, text, ADDINS, digits_batch)
    assert "cannot run at fc2:post" in e.value.message
    assert text[e.value.position :].startswith("adapt_input")
    assert "adapt_output" in e.value.hint
    assert_same(mlp, snap)


def test_attach_freezes_base_and_keeps_trainable(mlp, digits_batch):
    text = "(MLPAddin.adapt_input): ...->{inout1}(fc2)->...\ntrainable(fc3)"
    with attach(mlp, text, ADDINS, digits_batch) as att:
        trainable = {n for n, p in mlp.named_parameters() if p.requires_grad}
        assert trainable == {"fc3.weight", "fc3.bias"} | {
            f"addins.{n}" for n, _ in att.addins.named_parameters()
        }
        n_addin = sum(p.numel() for p in att.addins.parameters())
        assert count_parameters(mlp) == (n_addin + 10 * 32 + 10, sum(p.numel() for p in mlp.parameters()))
        # a training step changes only the add-in and fc3
        before = {n: p.clone() for n, p in mlp.named_parameters()}
        opt = torch.optim.SGD([p for p in mlp.parameters() if p.requires_grad], lr=0.1)
        mlp(digits_batch).sum().backward()
        opt.step()
        changed = {n for n, p in mlp.named_parameters() if not torch.equal(p, before[n])}
        assert changed and changed <= trainable
        assert "fc1.weight" not in changed


def test_detach_restores_mixed_flags_and_is_idempotent(mlp, digits_batch):
    mlp.fc1.weight.requires_grad_(False)
    snap = snapshot(mlp)
    att = attach(mlp, "(Identity.adapt_output): ...->(fc1){inout1}->...", example_input=digits_batch)
    assert not any(p.requires_grad for p in mlp.parameters())
    att.detach()
    att.detach()
    assert_same(mlp, snap)
    assert not att.attached


BAD_ATTACH = [
    ("(MLPAddin.adapt_input): ...->{inout1}(fc4)->...", "no module 'fc4'", "fc4", "did you mean 'fc3'?"),
    ("(MLPAddin.adapt_input): ...->{inout1}(fc2.weight)->...", "no module 'fc2.weight'", "weight", None),
    (
        "(MLPAdd.adapt_input): ...->{inout1}(fc2)->...",
        "unknown add-in 'MLPAdd'",
        "MLPAdd",
        "did you mean 'MLPAddin'?",
    ),
    ("(MLPAddin.adapt_inptu): ...->{inout1}(fc2)->...", "has no method 'adapt_inptu'", "adapt_inptu", None),
    ("(MLPAddin.adapt_output): ...->{inout1}(fc2)->...", "cannot run at fc2:pre", "adapt_output", None),
    ("(MLPAddin.adapt_across_input): ...->{in1}(fc3)->{out1}(fc1)->...", "runs after {out}", "fc1", None),
    (
        "(MLPAddin.adapt_input, rank=4): ...->{inout1}(fc2)->...",
        "does not take a setting 'rank'",
        "rank",
        None,
    ),
    (
        "(MLPAddin.adapt_input, reduction_dim=0): ...->{inout1}(fc2)->...",
        "building MLPAddin",
        "MLPAddin",
        None,
    ),
    (
        "(MLPAddin.adapt_input): ...->{inout1}(fc2)->...\ntrainable(fc9)",
        "matches no parameter",
        "fc9",
        "did you mean 'fc3'?",
    ),
    ("", "places no add-in and keeps nothing trainable", "", None),
    ("  \n\t ", "places no add-in and keeps nothing trainable", "  \n", None),
]


@pytest.mark.parametrize("text,message,at,hint", BAD_ATTACH)
def test_bad_placements_raise_and_leave_model_untouched(mlp, digits_batch, text, message, at, hint):
    snap = snapshot(mlp)
    with pytest.raises(ConfigError) as e:
        attach(mlp, text, ADDINS, digits_batch)
    assert message in e.value.message
    assert text[e.value.position :].startswith(at)
    if hint:
        assert e.value.hint == hint
    assert_same(mlp, snap)


def test_second_placement_failing_leaves_first_unapplied(mlp, digits_batch):
    snap = snapshot(mlp)
    with pytest.raises(ConfigError):
        attach(
            mlp,
            "(MLPAddin.adapt_input): ...->{inout1}(fc2)->...\n"
            "(MLPAddin.adapt_input): ...->{inout1}(fc5)->...",
            ADDINS,
            digits_batch,
        )
    assert_same(mlp, snap)


def test_failure_while_registering_hooks_rolls_back(mlp, digits_batch, monkeypatch):
    snap = snapshot(mlp)
    calls = []

    def flaky(self, hook, *a, **k):
        if type(hook).__name__ == "PreHook":  # the engine's hooks, not trace()'s
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("boom")
        return original(self, hook, *a, **k)

    original = nn.Module.register_forward_pre_hook
    monkeypatch.setattr(nn.Module, "register_forward_pre_hook", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        attach(
            mlp,
            "(MLPAddin.adapt_input): ...->{inout1}(fc2)->...\n"
            "(MLPAddin.adapt_input): ...->{inout1}(fc3)->...",
            ADDINS,
            digits_batch,
        )
    monkeypatch.undo()
    assert_same(mlp, snap)


def test_factory_needing_unknown_arguments_is_explained(mlp, digits_batch):
    class Needy(AddinBase):
        def __init__(self, config, model_config):
            super().__init__()

    with pytest.raises(ConfigError) as e:
        attach(mlp, "(Needy.adapt_input): ...->{inout1}(fc2)->...", {"Needy": Needy}, digits_batch)
    assert "needs 'config', 'model_config'" in e.value.message
    assert "(Needy.adapt_input, config=...)" in e.value.hint


def test_settings_reach_the_factory(mlp, digits_batch):
    with attach(
        mlp, "(MLPAddin.adapt_input, reduction_dim=3): ...->{inout1}(fc2)->...", ADDINS, digits_batch
    ) as att:
        assert addin_of(att).fc1.out_features == 3


def test_in_not_run_is_a_clear_runtime_error_without_example_input():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x, use_a=True):
            return self.b(self.a(x) if use_a else x)

    model = Branchy()
    with attach(model, "(Identity.adapt_across_input): ...->(a){in1}->...->{out1}(b)->...") as att:
        model(torch.randn(2, 4))
        with pytest.raises(RuntimeError, match=r"the \{in\} point did not run"):
            model(torch.randn(2, 4), use_a=False)
        assert addin_of(att).inputs_cache is None


def test_sequential_root_still_computes_the_same():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    plain = model(x)
    snap = snapshot(model)
    with attach(model, "(Identity.adapt_output): ...->([0]){inout1}->...", example_input=x) as att:
        assert "addins" in dict(model.named_children())
        assert torch.equal(model(x), plain)
        assert len(att.addins) == 1
    assert_same(model, snap)
    assert len(model) == 3


def test_attached_model_pickles_deepcopies_and_saves(mlp, digits_batch):
    with attach(
        mlp, "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->...", ADDINS, digits_batch
    ):
        y = mlp(digits_batch)
        clone = pickle.loads(pickle.dumps(mlp))
        assert torch.equal(clone(digits_batch), y)
        assert torch.equal(copy.deepcopy(mlp)(digits_batch), y)
        buf = io.BytesIO()
        torch.save(mlp.state_dict(), buf)
        assert any(k.startswith("addins.") for k in torch.load(io.BytesIO(buf.getvalue()), weights_only=True))


class ScaledLinear(AddinBase):
    """A toy mergeable add-in: adds (x @ D^T) to a Linear's output; merge folds D into the weight."""

    def __init__(self, point):
        super().__init__()
        self.delta = nn.Parameter(torch.randn_like(point.module.weight) * 0.1)

    def adapt_output(self, module, inputs, outputs):
        return outputs + inputs[0] @ self.delta.t()

    def merge(self, module):
        module.weight += self.delta


def test_merge_removes_hook_and_unmerge_restores_exactly(mlp, digits_batch):
    w = mlp.fc2.weight.detach().clone()
    snap = snapshot(mlp)
    att = attach(
        mlp,
        "(ScaledLinear.adapt_output): ...->(fc2){inout1}->...",
        {"ScaledLinear": ScaledLinear},
        digits_batch,
    )
    hooked = mlp(digits_batch)
    att.merge()
    assert att.merged and not mlp.fc2._forward_hooks
    assert torch.allclose(mlp(digits_batch), hooked, atol=1e-5)
    att.unmerge()
    assert torch.equal(mlp.fc2.weight, w) and len(mlp.fc2._forward_hooks) == 1
    assert torch.equal(mlp(digits_batch), hooked)
    att.merge()
    att.detach()  # detach while merged restores the weights too
    assert_same(mlp, snap)


def test_two_attachments_stack_and_detach_independently(mlp, digits_batch):
    plain = mlp(digits_batch)
    a = attach(mlp, "(MLPAddin.adapt_input): ...->{inout1}(fc2)->...", ADDINS, digits_batch)
    b = attach(mlp, "(Identity.adapt_output): ...->(fc2){inout1}->...", example_input=digits_batch)
    assert {"addins", "addins_1"} <= set(dict(mlp.named_children()))
    one = mlp(digits_batch)
    b.detach()
    assert torch.equal(mlp(digits_batch), one)
    a.detach()
    assert torch.equal(mlp(digits_batch), plain)


def test_config_object_and_registry_names(mlp, digits_batch):
    cfg = studio.parse("(Identity.adapt_output): ...->(fc1){inout1}->...")
    with attach(mlp, cfg, example_input=digits_batch) as att:
        assert att.config == cfg
        assert [k for k, _, _ in att.entries] == ["Identity_fc1"]
    assert "Identity" in studio.available_addins()
    assert studio.methods_for(MLPAddin, "pre") == ["adapt_across_input", "adapt_input"]
    assert studio.methods_for(MLPAddin, "post") == ["adapt_across_output", "adapt_output"]


def test_trainable_table_lists_trainable_parameters(mlp, digits_batch):
    with attach(
        mlp, "(MLPAddin.adapt_input): ...->{inout1}(fc2)->...\ntrainable(fc3.bias)", ADDINS, digits_batch
    ):
        table = studio.trainable_table(mlp)
    lines = table.splitlines()
    assert any(line.startswith("| fc3.bias ") and line.rstrip().endswith("10 |") for line in lines)
    assert not any(line.startswith("| fc1.weight") for line in lines)
    trainable, total = 16 * 32 + 16 + 32 * 16 + 32 + 10, sum(p.numel() for p in mlp.parameters()) + 1072
    assert lines[-1] == (
        f"Trainable/total parameters: {trainable / 1e3:.2f}K / {total / 1e3:.2f}K "
        f"({100 * trainable / total:.4g}%)"
    )


def test_summary_line_uses_millions_like_zhijian():
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 30))
    model[0].requires_grad_(False)
    assert studio.summary_line(model) == "Trainable/total parameters: 0.03M / 1.03M (2.913%)"


TIMM = [
    (
        "vit_tiny_patch16_224",
        (1, 3, 224, 224),
        "(Identity.adapt_output): ...->(blocks[0:12].attn.qkv){inout1}->...\n"
        "(Identity.adapt_across_output): ...->(blocks[0:11]){in1}->...->(blocks[1:12]){out1}->...",
        23,
    ),
    (
        "resnet18",
        (1, 3, 64, 64),
        "(Identity.adapt_input): ...->{inout1}(layer1[0:2].conv1)->...\n"
        "(Identity.adapt_output): ...->(layer4){inout1}->...",
        3,
    ),
    ("convnext_atto", (1, 3, 64, 64), "(Identity.adapt_output): ...->(stages[0:4]){inout1}->...", 4),
]


@pytest.mark.parametrize("name,shape,text,count", TIMM)
def test_timm_identity_addins_leave_outputs_unchanged(name, shape, text, count):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        plain = model(x)
    snap = snapshot(model)
    with attach(model, text, example_input=x) as att:
        assert len(att.addins) == count
        with torch.no_grad():
            assert torch.equal(model(x), plain)
    assert_same(model, snap)
    with torch.no_grad():
        assert torch.equal(model(x), plain)


def test_timm_vit_mlp_addin_across_blocks_trains_only_addins():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3)
    x = torch.randn(2, 3, 224, 224)
    text = (
        "(MLPAddin.adapt_across_output): ...->{in1}(blocks[0:4])->...->(blocks[0:4].mlp){out1}->...\n"
        "trainable(head)"
    )
    with attach(model, text, ADDINS, x) as att:
        assert len(att.addins) == 4
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        assert {"head.weight", "head.bias"} <= names
        assert all(n.startswith(("addins.", "head.")) for n in names)
        loss = model(x).logsumexp(-1).sum()
        loss.backward()
        assert all(p.grad is not None for p in att.addins.parameters())
        assert model.blocks[0].attn.qkv.weight.grad is None


def test_to_moves_addins_with_model(mlp, digits_batch):
    with attach(mlp, "(MLPAddin.adapt_input): ...->{inout1}(fc2)->...", ADDINS, digits_batch) as att:
        mlp.to(torch.float64)
        assert all(p.dtype == torch.float64 for p in att.addins.parameters())
        assert mlp(digits_batch.double()).dtype == torch.float64


def test_range_past_the_last_block_names_the_block_count():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    text = "(Identity.adapt_output): ...->(blocks[0:13].attn.qkv){inout1}->..."
    snap = snapshot(model)
    with pytest.raises(ConfigError) as e:
        attach(model, text, example_input=torch.randn(1, 3, 224, 224))
    assert "'blocks' has 12 blocks: indices 0 to 11" in e.value.message
    assert text[e.value.position :].startswith(":13]")
    assert e.value.hint == "ranges are end-exclusive: [0:12] covers all of 'blocks'"
    assert_same(model, snap)


def test_reuse_keeps_equal_placements_objects_and_rebuilds_changed_ones(mlp, digits_batch):
    one = "(LoRA.adapt_output, r=2): ...->(fc1){inout1}->..."
    first = attach(mlp, one, example_input=digits_batch)
    (old,) = first.addins.values()
    with torch.no_grad():
        old.lora_B.fill_(1.0)
    trained = mlp(digits_batch)
    first.detach()
    reuse = {p: a for (_, p, a) in first.entries}
    two = one + "\n(LoRA.adapt_output, r=2): ...->(fc2){inout1}->..."
    with attach(mlp, two, example_input=digits_batch, reuse=reuse) as att:
        kept, new = [a for _, _, a in att.entries]
        assert kept is old and torch.equal(kept.lora_B, torch.ones_like(kept.lora_B))
        assert new is not old and torch.count_nonzero(new.lora_B) == 0
        assert torch.allclose(mlp(digits_batch), trained)  # fc2's LoRA starts at zero: same output
    changed = "(LoRA.adapt_output, r=3): ...->(fc1){inout1}->..."  # other settings: rebuilt
    with attach(mlp, changed, example_input=digits_batch, reuse=reuse) as att:
        assert addin_of(att) is not old and addin_of(att).lora_A.shape[0] == 3


def test_empty_config_object_is_refused_too_and_trainable_only_is_fine(mlp, digits_batch):
    snap = snapshot(mlp)
    with pytest.raises(ConfigError, match="places no add-in"):
        attach(mlp, studio.Config(), example_input=digits_batch)
    assert_same(mlp, snap)
    with attach(mlp, "trainable(fc3)", example_input=digits_batch):
        assert count_parameters(mlp)[0] == sum(p.numel() for p in mlp.fc3.parameters())
    assert_same(mlp, snap)
