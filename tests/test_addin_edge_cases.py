"""Edge cases of the add-ins and engine paths, driven as an adversarial user would: crafted adapter
files, odd layers and dtypes, stacked and named adapters, the widget driven from Python."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import addin_studio as studio


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "classes": [(n, type(m)) for n, m in model.named_modules()],
        "attrs": {n: sorted(vars(m)) for n, m in model.named_modules()},
    }


def _assert_same(model: nn.Module, snap: dict) -> None:
    now = _snapshot(model)
    assert now["classes"] == snap["classes"] and now["hooks"] == snap["hooks"]
    assert now["grad"] == snap["grad"] and now["attrs"] == snap["attrs"]
    assert list(now["state"]) == list(snap["state"])
    assert all(torch.equal(now["state"][k], snap["state"][k]) for k in snap["state"])


def _vit(depth: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=depth, num_classes=3
    ).eval()


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
FACT = "(FacT_tt.adapt_output, r=4): ...->(blocks[0:2].attn.qkv){inout1}->..."


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def test_fact_file_holding_a_shared_factor_twice_without_the_shared_field_is_refused(tmp_path):
    model = _vit()
    att = studio.attach(model, FACT, example_input=X)
    torch.manual_seed(2)
    for p in att.addins.parameters():
        nn.init.normal_(p)
    att.save(tmp_path / "f.safetensors")
    tensors, meta = _read(tmp_path / "f.safetensors")
    shared = json.loads(meta.pop("shared"))
    assert sorted(shared) == ["addins.FacT_tt_blocks_1_attn_qkv.u", "addins.FacT_tt_blocks_1_attn_qkv.v"]
    for alias, owner in shared.items():  # the tied factor written twice, with different values
        tensors[alias] = tensors[owner] + 1
    save_file(tensors, str(tmp_path / "twice.safetensors"), metadata=meta)
    fresh = _vit()
    snap = _snapshot(fresh)
    with pytest.raises(
        ValueError,
        match=r"twice\.safetensors: tensor 'addins\.FacT_tt_blocks_1_attn_qkv\.u' "
        r"is shared with 'addins\.FacT_tt_blocks_0_attn_qkv\.u'.*field "
        r"'shared'",
    ):
        studio.load(fresh, tmp_path / "twice.safetensors")
    _assert_same(fresh, snap)
    # the file as saved still loads, and gives the saved model's outputs
    loaded = studio.load(fresh, tmp_path / "f.safetensors")
    assert torch.allclose(fresh(X), model(X), atol=1e-5)
    loaded.detach()
    _assert_same(fresh, snap)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_monteclora_trains_in_half_precision(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5).to(dtype))
    att = studio.attach(
        model, "(LoRA.adapt_output, r=2, monteclora=true, monteclora_samples=2): ...->(0){inout1}->..."
    )
    lora = att.addins["LoRA_0"]
    model.train()
    y = model(torch.randn(3, 6).to(dtype))
    assert y.dtype == dtype
    (y.float().sum() + lora.monteclora_loss()).backward()
    grad = lora.lora_monteclora.std_prior.grad
    assert grad is not None and grad.dtype == dtype and bool(torch.isfinite(grad).all())
    assert lora.lora_A.grad is not None and float(lora.lora_A.grad.abs().sum()) == 0.0  # B is 0
    assert float(lora.lora_B.grad.abs().sum()) > 0


TOKENS = '(TrainableTokens.adapt_weight, indices="3, 10"): ...->(0){inout1}->...'
IDS = torch.tensor([[0, 3, 10, 19], [5, 10, 10, 2]])


def _stacked_embedding():
    """An embedding with TrainableTokens (first attachment) and LoRA.adapt_weight (second) on it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 4))
    bare = model(IDS).detach()
    tokens = studio.attach(model, TOKENS)
    lora = studio.attach(model, "(LoRA.adapt_weight, r=2): ...->(0){inout1}->...")
    with torch.no_grad():
        tokens.addins["TrainableTokens_0"].rows.add_(1.0)
        lora.addins["LoRA_0"].lora_B.fill_(0.3)
        lora.addins["LoRA_0"].lora_A.normal_()  # an Embedding's LoRA starts with A at zero (as PEFT's)
    return model, tokens, lora, bare


def test_merging_an_update_under_a_weight_method_it_does_not_commute_with_is_refused():
    model, tokens, lora, _ = _stacked_embedding()
    out = model(IDS).detach()
    snap = _snapshot(model)
    # the rows TrainableTokens puts in would overwrite LoRA's update of rows 3 and 10 once folded in
    with pytest.raises(
        ValueError,
        match=r"cannot merge LoRA_0 into '0\.weight': its weight is also read "
        r"through \(TrainableTokens\.adapt_weight\) at 0:post, which stays "
        r"attached and does not commute",
    ):
        lora.merge()
    _assert_same(model, snap)
    assert not lora.merged and torch.equal(model(IDS), out)
    tokens.merge()  # in the order they are applied, both fold in exactly
    lora.merge()
    assert torch.equal(model(IDS), out)


def test_stacked_merges_unmerge_in_reverse_order_only_and_keep_the_weight_methods_order():
    model, tokens, lora, bare = _stacked_embedding()
    out = model(IDS).detach()
    tokens.merge()
    lora.merge()
    with pytest.raises(
        RuntimeError,
        match=r"cannot unmerge TrainableTokens_0: '0\.weight' has LoRA_0 merged "
        r"into it \(another attachment\) since",
    ):
        tokens.unmerge()
    with pytest.raises(RuntimeError, match="unmerge \\(or detach\\) that attachment first"):
        tokens.detach()
    assert tokens.attached and torch.equal(model(IDS), out)
    lora.unmerge()
    tokens.unmerge()  # the rows go back in front of LoRA in the weight's chain: same outputs
    assert torch.equal(model(IDS), out)
    lora.detach()
    tokens.detach()
    assert torch.equal(model(IDS), bare) and type(model[0]) is nn.Embedding


def test_a_hook_merge_under_another_attachments_weight_method_lands_in_the_stored_weight():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(8, 8)), torch.randn(3, 8)
    first = studio.attach(model, "(LoRA.adapt_weight, r=2): ...->(0){inout1}->...")
    fact = studio.attach(model, "(FacT_tt.adapt_output, r=2, dropout=0): ...->(0){inout1}->...")
    ia3 = studio.attach(model, "(IA3.adapt_output): ...->(0){inout1}->...")
    with torch.no_grad():
        first.addins["LoRA_0"].lora_B.normal_()
        fact.addins["FacT_tt_0"].v.normal_()
        ia3.addins["IA3_0"].ia3_l.fill_(1.5)
    out = model(x).detach()
    snap = _snapshot(model)
    # IA3 scales the layer's output: folded into W it would not scale LoRA's weight-method update
    with pytest.raises(
        ValueError,
        match=r"cannot merge IA3_0 into '0\.weight'.*\(LoRA\.adapt_weight\) at "
        r"0:post.*not a plain addition to the weight",
    ):
        ia3.merge()
    _assert_same(model, snap)
    ia3.detach()
    out = model(x).detach()
    fact.merge()  # FacT adds to the stored weight, which LoRA's weight method then reads
    assert not torch.equal(model[0]._parameters["weight"], snap["state"]["0.weight"])
    torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-5)
    fact.unmerge()
    assert torch.equal(model(x), out)


@pytest.mark.parametrize(
    "config",
    [
        '(TrainableTokens.adapt_weight, indices="3"): ...->(0){inout1}->...',
        "(LoRA.adapt_weight, r=2): ...->(0){inout1}->...",
    ],
)
def test_weight_methods_on_a_sparse_embedding_are_refused_at_attach(config):
    model = nn.Sequential(nn.Embedding(20, 4, sparse=True))
    snap = _snapshot(model)
    with pytest.raises(
        studio.ConfigError,
        match=r"Embedding\(sparse=True\) gives its weight a sparse gradient, "
        r"which cannot flow through a weight method; build it with "
        r"sparse=False",
    ) as info:
        studio.attach(model, config)
    assert info.value.position == config.index(".adapt_weight") + 1
    _assert_same(model, snap)


def test_lora_output_on_a_sparse_embedding_trains_with_dense_gradients_and_merges():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 4, sparse=True))
    att = studio.attach(model, "(LoRA.adapt_output, r=2): ...->(0){inout1}->...")
    lora = att.addins["LoRA_0"]
    with torch.no_grad():
        lora.lora_B.fill_(0.5)
    out = model(IDS)
    out.square().sum().backward()
    assert lora.lora_A.grad.layout == torch.strided and float(lora.lora_A.grad.abs().sum()) > 0
    att.merge()
    torch.testing.assert_close(model(IDS), out.detach())


def test_attachments_that_move_the_base_weight_detach_last_first_and_restore_it_exactly():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(8, 8)), torch.randn(3, 8)
    weight, out = model[0].weight.detach().clone(), model(x).detach()
    pissa = studio.attach(model, "(LoRA.adapt_output, r=2, init=pissa): ...->(0){inout1}->...")
    kasa = studio.attach(model, "(LoRA.adapt_output, r=2, kasa=true): ...->(0){inout1}->...")
    moved = model[0].weight.detach().clone()
    # restoring PiSSA's snapshot now would put back the part KaSA took out, then KaSA's would undo PiSSA's
    with pytest.raises(
        RuntimeError,
        match=r"cannot detach LoRA_0: '0\.weight' had part moved out by LoRA_0 "
        r"\(another attachment\) since; unmerge \(or detach\) that",
    ):
        pissa.detach()
    assert pissa.attached and torch.equal(model[0].weight, moved)
    kasa.detach()
    pissa.detach()
    assert torch.equal(model[0].weight, weight) and torch.equal(model(x), out)

    pissa = studio.attach(model, "(LoRA.adapt_output, r=2, init=pissa): ...->(0){inout1}->...")
    lora = studio.attach(model, "(LoRA.adapt_output, r=2): ...->(0){inout1}->...")
    with torch.no_grad():
        lora.addins["LoRA_0"].lora_B.normal_()
    lora.merge()
    with pytest.raises(RuntimeError, match=r"cannot detach LoRA_0: '0\.weight' has LoRA_0 merged into it"):
        pissa.detach()
    lora.detach()
    pissa.detach()
    assert torch.equal(model[0].weight, weight) and type(model[0]) is nn.Linear


@pytest.mark.parametrize("index", ["abc", None, 1.5, True])
def test_a_remove_intent_without_a_placement_number_is_an_error_not_an_exception(index):
    from addin_studio.examples import TutorialMLP

    torch.manual_seed(0)
    model = TutorialMLP(8, 6, 3)
    widget = studio.Studio(model, example_input=torch.randn(2, 8))
    config = "(LoRA.adapt_output, r=2): ...->(fc1){inout1}->..."
    widget.handle({"type": "apply", "text": config})
    widget.handle({"type": "remove", "index": index})
    assert widget.error == f"remove needs the number of a listed placement, got {index!r}"
    assert widget.config == config
    widget.handle({"type": "remove", "index": "0"})  # the page may send it as text
    assert widget.config == "" and widget.error == ""


def test_loading_adapters_onto_a_meta_model_is_refused_instead_of_dropping_the_weights(tmp_path):
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3)).eval(), torch.randn(2, 8)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "base.safetensors"))
    att = studio.attach(model, "(FacT_tt.adapt_output, r=2): ...->(0){inout1}->...\ntrainable(1.bias)")
    with torch.no_grad():
        for p in att.addins.parameters():
            p.normal_()
    att.save(tmp_path / "adapters.safetensors")
    with studio.init_empty_weights():
        meta = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3)).eval()
    snap = _snapshot(meta)
    with pytest.raises(
        ValueError,
        match=r"adapters\.safetensors: the model is on the meta device "
        r"\(no weights yet\), where loading copies nothing: "
        r"call studio\.materialize first",
    ):
        studio.load(meta, tmp_path / "adapters.safetensors")
    assert [(n, type(m)) for n, m in meta.named_modules()] == snap["classes"]
    assert {n: p.requires_grad for n, p in meta.named_parameters()} == snap["grad"]
    # the documented order: materialize the base, then load the adapters
    bare = studio.attach(meta, "(FacT_tt.adapt_output, r=2): ...->(0){inout1}->...")
    studio.materialize(meta, bare, tmp_path / "base.safetensors").detach()
    studio.load(meta, tmp_path / "adapters.safetensors")
    torch.testing.assert_close(meta(x), model(x))


def test_saving_adapters_still_on_the_meta_device_is_a_clear_error(tmp_path):
    with studio.init_empty_weights():
        meta = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3))
    att = studio.attach(meta, "(FacT_tt.adapt_output, r=2): ...->(0){inout1}->...")
    with pytest.raises(
        ValueError,
        match=r"cannot save .*a\.safetensors: "
        r"tensor 'addins\.FacT_tt_0\.u' is on the "
        r"meta device \(no values\); call studio\.materialize first",
    ):
        att.save(tmp_path / "a.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_one_attachment_merges_its_weight_methods_before_its_hook_updates_on_a_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 4))
    weight = model[0].weight.detach().clone()
    # written hook first: folding LoRA in first would let the rows overwrite its update of rows 3 and 10
    att = studio.attach(model, "(LoRA.adapt_output, r=2): ...->(0){inout1}->...\n" + TOKENS)
    with torch.no_grad():
        att.addins["LoRA_0"].lora_B.fill_(0.3)
        att.addins["TrainableTokens_0"].rows.add_(1.0)
    out = model(IDS).detach()
    att.merge()
    torch.testing.assert_close(model(IDS), out)
    att.unmerge()
    assert torch.equal(model[0]._parameters["weight"], weight) and torch.equal(model(IDS), out)
    att.detach()
    assert torch.equal(model[0].weight, weight) and type(model[0]) is nn.Embedding
