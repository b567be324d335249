"""FacT (FacT-TT and FacT-TK): identity at attach, factors shared by every placement (one Parameter,
counted and saved once), the paper's parameter count and per-slab formula, training moves only FacT,
save -> load on a fresh model, exact detach and merge, clear errors that leave the model untouched."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import addin_studio as studio
from addin_studio import ConfigError
from addin_studio.widget.settings import schema
from test_ddp import WORKER, _load, _run, _torchrun, needs_gloo

TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
D, R, L = 192, 4, 2  # the tiny ViT's width, the rank used here, its blocks


def _vit():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=L, num_classes=3
    ).eval(), torch.randn(2, 3, 32, 32)


def _config(kind: str, r: int = R, **settings) -> str:
    extra = "".join(f", {k}={v}" for k, v in settings.items())
    return "\n".join(
        f"(FacT_{kind}.adapt_output, r={r}{extra}): ...->(blocks[0:{L}].{t}){{inout1}}->..." for t in TARGETS
    )


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "children": [n for n, _ in model.named_children()],
    }


def _assert_same(model: nn.Module, snap: dict) -> None:
    now = _snapshot(model)
    assert now["children"] == snap["children"] and now["hooks"] == snap["hooks"]
    assert now["grad"] == snap["grad"]
    assert list(now["state"]) == list(snap["state"])
    assert all(torch.equal(now["state"][k], snap["state"][k]) for k in snap["state"])


def _paper_count(kind: str, d: int, r: int, layers: int) -> int:
    """The paper's counts: 2dr + 12 L r^2 (TT), 2dr + r^3 + 12 L r (TK), 12 slabs a block."""
    return 2 * d * r + (12 * layers * r * r if kind == "tt" else r**3 + 12 * layers * r)


@pytest.mark.parametrize("kind", ["tt", "tk"])
def test_fact_identity_shared_count_train_save_load_detach(tmp_path, kind):
    model, x = _vit()
    fresh = copy.deepcopy(model)
    snap, y0 = _snapshot(model), model(x).detach()
    att = studio.attach(model, _config(kind) + "\ntrainable(head)", example_input=x)
    assert torch.equal(model(x), y0)  # V starts at zero: an identity

    addins = list(att.addins.values())
    assert len(addins) == len(TARGETS) * L
    shared = ("u", "v", "c") if kind == "tk" else ("u", "v")
    for name in shared:  # one Parameter object in every add-in
        assert all(getattr(a, name) is getattr(addins[0], name) for a in addins)
    # counted once: by parameters(), count_parameters and the trainable table
    fact_params = sum(p.numel() for p in att.addins.parameters())
    assert fact_params == _paper_count(kind, D, R, L) == (1920 if kind == "tt" else 1696)
    head = sum(p.numel() for p in model.head.parameters())
    assert studio.count_parameters(model)[0] == fact_params + head
    table = studio.trainable_table(model)
    assert table.count(".u ") == 1 and f"addins.FacT_{kind}_blocks_0_attn_qkv.u " in table

    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # V starts at zero: U and the cores move from the second step on
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    own = {n for n, _ in att.addins.named_parameters(prefix="addins")}
    assert moved == own | {"head.weight", "head.bias"}
    model.eval()
    y1 = model(x).detach()
    assert not torch.allclose(y1, y0)

    path = tmp_path / "fact.safetensors"
    att.save(path)
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    first = f"addins.FacT_{kind}_blocks_0_attn_qkv"
    assert {k for k in keys if k.rsplit(".", 1)[-1] in shared} == {f"{first}.{n}" for n in shared}
    aliases = json.loads(meta["shared"])
    assert len(aliases) == len(shared) * (len(addins) - 1) and set(aliases.values()) == {
        f"{first}.{n}" for n in shared
    }
    att.detach()
    kept = {"head.weight", "head.bias"}
    _assert_same(
        model,
        {**snap, "state": {k: (model.state_dict()[k] if k in kept else v) for k, v in snap["state"].items()}},
    )

    loaded = studio.load(fresh, path, example_input=x)
    assert torch.equal(fresh(x), y1)
    again = list(loaded.addins.values())
    assert all(a.u is again[0].u and a.v is again[0].v for a in again)  # shared again, not copies
    loaded.detach()


@pytest.mark.parametrize("kind", ["tt", "tk"])
def test_fact_follows_the_papers_formula_slab_by_slab(kind):
    """Each d x d slab's increment is V S U: S the slab's own core (TT) or C x_3 p_k (TK)."""
    model, x = _vit()
    att = studio.attach(model, _config(kind, dropout=0.0), example_input=x)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in att.addins.parameters():
            p.normal_(0, 0.2)
    a = att.addins["FacT_tt_blocks_1_mlp_fc2" if kind == "tt" else "FacT_tk_blocks_1_mlp_fc2"]
    q = att.addins[f"FacT_{kind}_blocks_0_attn_qkv"]
    U, V = a.u.detach(), a.v.detach()

    def core(addin, i, j, slabs_in):  # maps u (r) to the output slab's r: y = core @ u
        if kind == "tt":
            return addin.s.detach()[i * R : (i + 1) * R, j * R : (j + 1) * R]
        k = i * slabs_in + j
        return torch.einsum("qok,k->oq", addin.c.detach(), addin.p.detach()[:, k])

    h = torch.randn(5, 4 * D)  # fc2: 4 input slabs, 1 output slab
    want = sum(V @ core(a, 0, j, 4) @ U @ h[:, j * D : (j + 1) * D].T for j in range(4)).T
    torch.testing.assert_close(a(h), want, rtol=1e-5, atol=1e-5)
    t = torch.randn(5, D)  # qkv: 1 input slab, 3 output slabs q, k, v
    want = torch.cat([(V @ core(q, i, 0, 1) @ U @ t.T).T for i in range(3)], dim=-1)
    torch.testing.assert_close(q(t), want, rtol=1e-5, atol=1e-5)
    dw = q.delta_weight()
    torch.testing.assert_close(dw[D : 2 * D], V @ core(q, 1, 0, 1) @ U, rtol=1e-5, atol=1e-6)

    y = model(x).detach()  # merging folds exactly that increment in; unmerge restores bit for bit
    weight = model.blocks[0].attn.qkv.weight.detach().clone()
    att.merge()
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, weight + dw, rtol=0, atol=1e-6)
    att.unmerge()
    assert torch.equal(model.blocks[0].attn.qkv.weight, weight) and torch.equal(model(x), y)
    att.detach()


def test_fact_on_any_linear_and_adapt_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6), nn.Linear(6, 6))
    x = torch.randn(3, 6)
    y0 = model(x)
    cfg = (
        "(FacT_tt.adapt_output, r=2): ...->(0){inout1}->...\n"
        "(FacT_tt.adapt_weight, r=2, dropout=0.0): ...->(2){inout1}->...\n"
        "(FacT_tt.adapt_output, r=2, width=3): ...->(3){inout1}->..."
    )
    att = studio.attach(model, cfg, example_input=x)
    assert torch.equal(model(x), y0)
    first, second, third = att.addins.values()
    assert (first.slabs_in, first.slabs_out, second.slabs_in, second.slabs_out) == (1, 2, 2, 1)
    assert second.u is first.u and third.u is not first.u  # width 3 is its own group
    assert (third.slabs_in, third.slabs_out, tuple(third.u.shape)) == (2, 2, (2, 3))
    with torch.no_grad():
        for a in (first, second, third):
            a.v.normal_()
    stored = model[2]._parameters["weight"]  # adapt_weight changes the weight as read, not as stored
    torch.testing.assert_close(model[2].weight, stored + second.delta_weight(), rtol=0, atol=0)
    assert not torch.allclose(model[2].weight, stored)
    assert not torch.allclose(model(x), y0)
    att.detach()
    assert torch.equal(model(x), y0)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("r=0", "FacT_tt r must be a positive integer, got 0"),
        ("dropout=1.5", r"FacT dropout must be in \[0, 1\), got 1.5"),
        (
            "width=5",
            "FacT_tt shares factors of width 5 across layers, but 'blocks.0.attn.qkv' "
            r"\(Linear 192 -> 576\) is not made of 5x5 slabs: set width=",
        ),
        ("rank=4", "FacT_tt does not take a setting 'rank' \\(it takes: dropout, r, scale, width\\)"),
        ("shared=1", "setting 'shared' is reserved"),
    ],
)
def test_bad_settings_are_config_errors_and_leave_the_model_untouched(setting, message):
    model, x = _vit()
    snap = _snapshot(model)
    text = f"(FacT_tt.adapt_output, {setting}): ...->(blocks[0:2].attn.qkv){{inout1}}->..."
    with pytest.raises(ConfigError, match=message) as err:
        studio.attach(model, text, example_input=x)
    assert err.value.position is not None
    _assert_same(model, snap)


def test_wrong_places_are_config_errors_and_leave_the_model_untouched():
    model, x = _vit()
    snap = _snapshot(model)
    with pytest.raises(ConfigError, match="FacT_tk adapts nn.Linear layers; 'blocks.0.norm1' is LayerNorm"):
        studio.attach(model, "(FacT_tk.adapt_output): ...->(blocks[0].norm1){inout1}->...", example_input=x)
    with pytest.raises(ConfigError, match="FacT_tt has no method 'adapt_input'"):
        studio.attach(model, "(FacT_tt.adapt_input): ...->{inout1}(blocks[0].mlp.fc1)->...", example_input=x)
    with pytest.raises(
        ConfigError, match="dropout acts inside the FacT branch, which adapt_weight does not run"
    ):
        studio.attach(model, "(FacT_tt.adapt_weight): ...->(blocks[0].mlp.fc1){inout1}->...", example_input=x)
    _assert_same(model, snap)


def test_groups_reuse_and_separate_attachments():
    model, x = _vit()
    cfg = studio.parse(
        "(FacT_tt.adapt_output, r=4): ...->(blocks[0].attn.qkv){inout1}->...\n"
        "(FacT_tt.adapt_output, r=2): ...->(blocks[0].attn.proj){inout1}->..."
    )
    att = studio.attach(model, cfg, example_input=x)
    qkv, proj = att.addins.values()
    assert qkv.u is not proj.u and tuple(proj.u.shape) == (2, D)  # another rank: another group
    att.detach()
    # re-attached with one add-in reused, the new placement joins the reused add-in's factors
    more = studio.parse(
        str(cfg).splitlines()[0] + "\n(FacT_tt.adapt_output, r=4): ...->(blocks[1].attn.qkv){inout1}->..."
    )
    att = studio.attach(model, more, example_input=x, reuse={cfg.placements[0]: qkv})
    first, second = att.addins.values()
    assert first is qkv and second.u is qkv.u and second.v is qkv.v
    att.detach()
    other = studio.attach(model, more, example_input=x)  # a separate attach has its own factors
    assert next(iter(other.addins.values())).u is not qkv.u
    other.detach()


def test_a_file_whose_shared_field_lies_is_refused(tmp_path):
    model, x = _vit()
    fresh = copy.deepcopy(model)
    att = studio.attach(model, _config("tk"), example_input=x)
    path = tmp_path / "fact.safetensors"
    att.save(path)
    att.detach()
    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    snap = _snapshot(fresh)
    first = "addins.FacT_tk_blocks_0_attn_qkv"
    second = "addins.FacT_tk_blocks_1_attn_qkv"
    for shared, message in [
        ({f"{second}.u": "addins.nowhere.u"}, "field 'shared' maps 'addins.FacT_tk_blocks_1_attn_qkv.u'"),
        (
            {f"{second}.p": f"{first}.p"},
            f"says '{second}.p' is '{first}.p', but the add-ins attached from its config do not share them",
        ),  # same shape, not shared
    ]:
        bad = tmp_path / "bad.safetensors"
        save_file(
            {k: t for k, t in tensors.items() if k not in shared},
            str(bad),
            metadata={**meta, "shared": json.dumps({**json.loads(meta["shared"]), **shared})},
        )
        with pytest.raises(ValueError, match=message):
            studio.load(fresh, bad, example_input=x)
        _assert_same(fresh, snap)


def test_settings_form_and_strategy():
    assert [f.name for f in schema(studio.get_addin("FacT_tk"))] == ["r", "scale", "dropout", "width"]
    model, x = _vit()
    cfg = studio.strategies.fact(model, r=R, kind="tk")
    assert str(cfg) == _config("tk") + "\ntrainable(head)"
    att = studio.attach(model, cfg, example_input=x)
    assert sum(p.numel() for p in att.addins.parameters()) == _paper_count("tk", D, R, L)
    att.detach()
    assert "(FacT_tt.adapt_output, r=8, scale=10.0)" in str(studio.strategies.fact(model, scale=10.0))
    with pytest.raises(ValueError, match="kind must be 'tt' or 'tk', got 'cp'"):
        studio.strategies.fact(model, kind="cp")
    with pytest.raises(ValueError, match="targets \\['nothing'\\] match no nn.Linear"):
        studio.strategies.fact(model, targets=["nothing"])


def test_widget_settings_form_and_strategy_picker():
    from addin_studio.widget import Studio

    model, x = _vit()
    w = Studio(model, example_input=x)
    assert "fact_tt" in w.strategies and "fact_tk" in w.strategies
    w.handle({"type": "apply-strategy", "name": "fact_tk"})
    assert w.error == "" and w.config == str(studio.strategies.fact(model, kind="tk"))
    assert all(type(a).__name__ == "FacT_tk" for a in w.attachment.addins.values())
    w.handle({"type": "addin", "name": "FacT_tk"})
    form = {f["name"]: f["value"] for f in w.settings_form}
    assert set(form) == {"r", "scale", "dropout", "width"} and form["r"] == 8
    w.handle({"type": "setting", "name": "r", "value": "2"})  # every FacT_tk placement takes it
    assert w.error == "" and "(FacT_tk.adapt_output, r=2)" in w.config
    addins = list(w.attachment.addins.values())
    assert all(a.u is addins[0].u for a in addins) and tuple(addins[0].u.shape) == (2, D)
    w.close()


def test_named_adapters_keep_their_own_shared_factors(tmp_path):
    model, x = _vit()
    y0 = model(x).detach()
    named = studio.NamedAdapters(model, example_input=x)
    named.add("tt", _config("tt"))
    named.add("tk", _config("tk"))
    outs = {}
    for name in ("tt", "tk"):
        named.set_active(name)
        addins = list(named.attachment.addins.values())
        with torch.no_grad():
            addins[0].v.normal_(0, 0.5)  # one shared V: every placement of this adapter changes
        assert all(a.v is addins[0].v for a in addins)
        outs[name] = model(x).detach()
        assert not torch.allclose(outs[name], y0)
    named.set_active("tt")  # switching back: its own factors, trained values and sharing kept
    addins = list(named.attachment.addins.values())
    assert all(a.v is addins[0].v for a in addins) and torch.equal(model(x), outs["tt"])
    named.save("tt", tmp_path / "tt.safetensors")
    with named.disabled():
        assert torch.equal(model(x), y0)
    fresh, _ = _vit()  # the same seed: the same base weights
    loaded = studio.load(fresh, tmp_path / "tt.safetensors", example_input=x)
    assert torch.equal(fresh(x), outs["tt"])
    loaded.detach()
    # placements added by update() join the factors the kept placements trained
    v = addins[0].v
    named.update("tt", _config("tt").splitlines()[0])  # qkv only: keeps those add-ins
    named.update("tt", _config("tt"))
    grown = list(named.attachment.addins.values())
    assert len(grown) == len(addins) and grown[0] is addins[0] and all(a.v is v for a in grown)


def test_factors_live_on_the_layers_device_and_dtype():
    """Built where the layer is (meta here, bf16 below): a later .to() to another kind of device
    would replace each add-in's Parameter by its own copy, so the factors must not need one."""
    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=L, num_classes=3)
    att = studio.attach(model, _config("tk"), example_input=torch.empty(2, 3, 32, 32, device="meta"))
    addins = list(att.addins.values())
    assert addins[0].u.is_meta and addins[0].p.is_meta
    assert all(a.u is addins[0].u and a.c is addins[0].c for a in addins)
    att.detach()
    model = nn.Sequential(nn.Linear(8, 16)).to(torch.bfloat16)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    y0 = model(x)
    att = studio.attach(model, "(FacT_tt.adapt_output, r=2): ...->(0){inout}->...", example_input=x)
    a = next(iter(att.addins.values()))
    assert a.u.dtype == a.v.dtype == a.s.dtype == torch.bfloat16 and torch.equal(model(x), y0)
    att.detach()


@pytest.mark.slow  # two torchrun ranks plus a one-process run: process start-up and gloo dominate
@needs_gloo
def test_ddp_trains_shared_factors_as_one_process(tmp_path):
    """Two gloo ranks under torchrun (DDP sees each shared Parameter once) train FacT-TK exactly as
    one process does; the checkpoint holds U, V and C once."""
    _run([sys.executable, str(WORKER), str(tmp_path / "single"), "--fact"])
    _torchrun(str(WORKER), str(tmp_path / "ddp"), "--fact")
    initial, _ = _load(tmp_path / "single" / "initial.safetensors")
    single, meta = _load(tmp_path / "single" / "adapters.safetensors")
    ddp, _ = _load(tmp_path / "ddp" / "adapters.safetensors")
    assert (
        sorted(single)
        == sorted(ddp)
        == [
            "addins.FacT_tk_fc1.c",
            "addins.FacT_tk_fc1.p",
            "addins.FacT_tk_fc1.u",
            "addins.FacT_tk_fc1.v",
            "addins.FacT_tk_fc2.p",
        ]
    )
    assert json.loads(meta["shared"]) == {f"addins.FacT_tk_fc2.{n}": f"addins.FacT_tk_fc1.{n}" for n in "uvc"}
    assert min(float((single[k] - initial[k]).abs().max()) for k in single) > 1e-3  # all of them trained
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=0, atol=1e-6, msg=k)


def test_trainable_table_lists_a_shared_factor_once_and_says_so():
    model, _ = _vit()
    att = studio.attach(model, _config("tt"))
    rows = [line for line in studio.trainable_table(model).splitlines() if line.startswith("| addins.")]
    shared = [r for r in rows if "(shared by" in r]
    assert len(shared) == 2 and all(f"(shared by {len(TARGETS) * L})" in r for r in shared)  # u and v
    assert len(rows) == 2 + len(TARGETS) * L  # one row per tensor: u, v and each placement's core
    assert sum(int(r.split("|")[4].strip().replace(",", "")) for r in rows) == _paper_count("tt", D, R, L)
    att.detach()


@pytest.mark.parametrize("name", ["beit_base_patch16_224", "eva02_tiny_patch14_224"])
def test_strategy_puts_fact_on_the_weight_of_a_qkv_its_parent_reads(name):
    # BEiT and EVA read qkv.weight in their attention's forward (qkv never runs as a module)
    torch.manual_seed(0)
    size = 28 if "eva02" in name else 32
    extra = {"mlp_ratio": 4.0} if "eva02" in name else {}  # EVA-02's SwiGLU width is no multiple of 192
    model = timm.create_model(name, pretrained=False, img_size=size, num_classes=3, depth=2, **extra).eval()
    x = torch.randn(1, 3, size, size)
    with pytest.raises(ConfigError, match="never runs as a module"):  # without a trace: the output hook
        studio.attach(model, studio.strategies.fact(model, r=2), example_input=x)
    cfg = studio.strategies.fact(model, r=2, example_input=x)
    methods = {
        p.target.module.rsplit(".", 1)[-1]: (p.method, p.settings.get("dropout")) for p in cfg.placements
    }
    assert methods["qkv"] == ("adapt_weight", 0.0) and methods["fc2"] == ("adapt_output", None)
    before = model.forward_features(x)  # (the random head's outputs are ~1e-3: compare features)
    with studio.attach(model, cfg, example_input=x) as att:
        torch.testing.assert_close(model.forward_features(x), before)  # identity at attach
        with torch.no_grad():
            for _, p, addin in att.entries:
                for t in addin.parameters():
                    t.add_(0.05)
        assert (model.forward_features(x) - before).abs().max() > 1e-2  # the qkv weight moved too
    assert torch.equal(model.forward_features(x), before)
