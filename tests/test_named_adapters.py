"""studio.NamedAdapters: several adapters on one model — switch, disable, combine, save/load by name."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import addin_studio as studio

LORA_A = "(LoRA.adapt_output, r=2): ...->(conv){inout1}->(pool)->(flat)->(fc){inout2}->..."
LORA_B = (
    "(LoRA.adapt_output, r=3, alpha=6, rslora=true): ...->(conv){inout1}->(pool)->(flat)->(fc){inout2}->..."
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.fc(self.flat(self.pool(self.conv(x)))))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(2, 3, 6, 6)


def _randomize(named: studio.NamedAdapters, name: str, seed: int) -> None:
    """Give an adapter non-zero weights (LoRA's B starts at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for addin in named._adapters[name].objects.values():
            for p in addin.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        [(n, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()],
    )


def _same_state(model, state):
    sd, flags, hooks = state
    now = model.state_dict()
    return (
        sorted(now) == sorted(sd)
        and all(torch.equal(now[k], sd[k]) for k in sd)
        and {n: p.requires_grad for n, p in model.named_parameters()} == flags
        and [(n, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()] == hooks
    )


def test_switching_gives_each_adapters_own_outputs_and_disable_the_bare_model(net):
    model, x = net
    bare = copy.deepcopy(model)
    before = _state(model)
    y0 = model(x)
    named = studio.NamedAdapters(model, x)
    named.add("a", LORA_A)
    named.add("b", LORA_B)
    assert named.names == ["a", "b"] and named.active == "a"  # the first added is active
    _randomize(named, "a", 1)
    _randomize(named, "b", 2)
    outs = {}
    for name in ("a", "b", "a"):
        named.set_active(name)
        assert named.active == name
        outs[name] = model(x)
        # exactly what attaching that config alone, with the same weights, gives
        alone_model = copy.deepcopy(bare)
        cfg = named.config(name)
        with studio.attach(alone_model, cfg) as alone:
            for (_, p, addin), (_, q, mine) in zip(alone.entries, named.attachment.entries):
                assert p == q
                addin.load_state_dict(mine.state_dict())
            assert torch.equal(alone_model(x), outs[name])
        # only the active adapter's parameters train; the base is frozen
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {
            f"addins.{k}.{t}" for k, _, a in named.attachment.entries for t, _ in a.named_parameters()
        }
    assert not torch.allclose(outs["a"], outs["b"]) and not torch.allclose(outs["a"], y0)
    named.disable()
    assert named.active is None and named.attachment is None
    assert torch.equal(model(x), y0) and _same_state(model, before)
    with named.disabled():  # the context manager form leaves the active adapter on after
        pass
    named.set_active("b")
    with named.disabled():
        assert torch.equal(model(x), y0)
    assert named.active == "b" and torch.equal(model(x), outs["b"])
    assert repr(named) == "<NamedAdapters on Net: a, b (active)>"
    summary = named.summary().splitlines()
    assert summary[0] == "NamedAdapters on Net (active: b)"
    # balanced conv LoRA: A [2, 3*3] + B [4*3, 2]; fc: A [2, 16] + B [5, 2]
    assert summary[1] == f"  a: 2 add-in(s), {2 * 9 + 12 * 2 + 2 * 16 + 5 * 2} parameters"
    named.remove("b")
    assert named.names == ["a"] and named.active is None and _same_state(model, before)


def test_weighted_combination_is_the_weighted_sum_of_the_deltas(net):
    model, x = net
    base = {k: v.clone() for k, v in model.state_dict().items()}
    named = studio.NamedAdapters(model)
    named.add("a", LORA_A)
    named.add("b", LORA_B)
    _randomize(named, "a", 3)
    _randomize(named, "b", 4)
    deltas = {
        name: {p.target.module: a.delta().detach().clone() for p, a in named._adapters[name].objects.items()}
        for name in ("a", "b")
    }
    assert deltas["b"]["fc"].shape == (5, 16) and deltas["b"]["conv"].shape == (4, 3, 3, 3)
    weights = {"a": 0.7, "b": -0.3}
    named.add_weighted_adapter("ab", weights)
    assert named.active == "a" and named.names == ["a", "b", "ab"]
    named.set_active("ab")
    ranks = [a.r for _, _, a in named.attachment.entries]
    assert ranks == [5, 5] and all(a.scaling == 1.0 for _, _, a in named.attachment.entries)
    y = model(x)
    named.attachment.merge()
    merged = model.state_dict()
    for layer in ("conv", "fc"):
        want = base[f"{layer}.weight"] + sum(w * deltas[n][layer] for n, w in weights.items())
        assert (merged[f"{layer}.weight"] - want).abs().max().item() < 1e-6
    assert (model(x) - y).abs().max().item() < 1e-5
    named.attachment.unmerge()
    # the sources are untouched by the combination
    named.set_active("b")
    assert all(
        torch.equal(a.delta(), deltas["b"][p.target.module]) for p, a in named._adapters["b"].objects.items()
    )


def test_switching_keeps_trained_weights_and_each_adapters_kept_trainable_base(net):
    model, x = net
    head0 = model.head.weight.detach().clone()
    y0 = model(x)
    named = studio.NamedAdapters(model)
    named.add("a", LORA_A + "\ntrainable(head)")
    named.add("b", LORA_B)

    def train(steps=3):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        for _ in range(steps):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()

    train()
    assert not torch.equal(model.head.weight, head0)
    trained_a = {k: v.clone() for k, v in named.attachment.addins.state_dict().items()}
    head_a = model.head.weight.detach().clone()
    ya = model(x)
    named.set_active("b")
    assert torch.equal(model.head.weight, head0)  # b does not see a's trained head
    assert model.head.weight.requires_grad is False
    train()
    yb = model(x)
    named.set_active("a")
    assert torch.equal(model.head.weight, head_a) and model.head.weight.requires_grad
    assert all(torch.equal(v, trained_a[k]) for k, v in named.attachment.addins.state_dict().items())
    assert torch.equal(model(x), ya)
    named.set_active("b")
    assert torch.equal(model(x), yb)
    named.attachment.merge()  # switching away from a merged adapter unmerges it first
    assert (model(x) - yb).abs().max().item() < 1e-5
    named.set_active("a")
    assert torch.equal(model(x), ya)
    named.set_active("b")
    assert torch.equal(model(x), yb) and not named.attachment.merged
    named.attachment.merge()
    named.disable()
    assert torch.equal(model(x), y0) and torch.equal(model.head.weight, head0)


def test_save_and_load_by_name_round_trip_on_a_fresh_model(net, tmp_path):
    model, x = net
    fresh = copy.deepcopy(model)
    named = studio.NamedAdapters(model)
    named.add("a", LORA_A + "\ntrainable(head)")
    named.add("b", LORA_B)
    _randomize(named, "a", 5)
    _randomize(named, "b", 6)
    with torch.no_grad():
        model.head.bias.add_(1.0)  # a's own head
    outs = {}
    for name in ("a", "b"):
        named.set_active(name)
        outs[name] = model(x)
    named.save("a", tmp_path / "a.safetensors")  # b stays active
    assert named.active == "b" and torch.equal(model(x), outs["b"])
    named.save("b", tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="a conv LoRA goes to PEFT in PEFT's layout"):
        named.export_peft("b", tmp_path / "b_peft")
    assert named.active == "b" and torch.equal(model(x), outs["b"])
    named.add("c", "(LoRA.adapt_output, r=2, alpha=4): ...->(fc){inout1}->...")
    _randomize(named, "c", 8)
    named.set_active("c")
    outs["c"] = model(x)
    named.set_active("b")
    named.export_peft("c", tmp_path / "c_peft")
    assert named.active == "b"

    y0 = fresh(x)
    other = studio.NamedAdapters(fresh)
    other.load("b", tmp_path / "b.safetensors")
    other.load("a", tmp_path / "a.safetensors")
    assert other.active == "b" and torch.equal(fresh(x), outs["b"])
    other.set_active("a")
    assert torch.equal(fresh(x), outs["a"])
    other.disable()
    assert torch.equal(fresh(x), y0)
    with studio.from_peft(copy.deepcopy(fresh), tmp_path / "c_peft") as att:
        assert (att.model(x) - outs["c"]).abs().max().item() < 1e-6


def test_errors_are_clear_and_leave_model_and_adapters_untouched(net, tmp_path):
    model, x = net
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    named = studio.NamedAdapters(model, x)
    named.add("lora_a", LORA_A)
    named.add("ssf", "(SSF.adapt_output): ...->(fc){inout1}->...")
    named.add("dora", LORA_A.replace("r=2", "r=2, dora=true"))
    named.add("fc_only", "(LoRA.adapt_output, r=2): ...->(fc){inout1}->...")
    _randomize(named, "lora_a", 7)
    y = model(x)
    state = _state(model)
    cases = [
        (
            lambda: named.set_active("lora_b"),
            "no adapter named 'lora_b' (adapters: lora_a, ssf, dora, fc_only); did you mean 'lora_a'?",
        ),
        (lambda: named.remove("zzz"), "no adapter named 'zzz'"),
        (lambda: named.add("lora_a", LORA_B), "there is already an adapter named 'lora_a'"),
        (lambda: named.add("a-b", LORA_B), "an adapter name must be an identifier"),
        (lambda: named.add("bad", "(LoRA.adapt_output): ...->(nope){inout1}->..."), "nope"),
        (
            lambda: named.add("pissa", "(LoRA.adapt_output, r=2, init=pissa): ...->(fc){inout1}->..."),
            "moves part of the base weight into the adapter",
        ),
        (
            lambda: named.add_weighted_adapter("mix", {"lora_a": 0.5, "ssf": 0.5}),
            "add_weighted_adapter combines LoRA adapters only: 'ssf' has SSF.adapt_output at fc:post",
        ),
        (
            lambda: named.add_weighted_adapter("mix", {"lora_a": 0.5, "dora": 0.5}),
            "with dora=true, which is not linear in its factors",
        ),
        (
            lambda: named.add_weighted_adapter("mix", {"lora_a": 0.5, "fc_only": 0.5}),
            "'lora_a' and 'fc_only' do not adapt the same layers the same way",
        ),
        (lambda: named.add_weighted_adapter("mix", {"lora_a": 0.5, "lora_c": 0.5}), "did you mean 'lora_a'?"),
        (lambda: named.add_weighted_adapter("mix", {"lora_a": "x"}), "must be a number"),
        (lambda: named.load("junk", tmp_path / "junk.safetensors"), "junk.safetensors"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert message in str(info.value), str(info.value)
        assert named.active == "lora_a" and named.names == ["lora_a", "ssf", "dora", "fc_only"]
        assert _same_state(model, state) and torch.equal(model(x), y)


def test_weighted_combination_on_weight_methods_and_embeddings():
    # adapt_weight (the delta read into the weight) and Embedding (a transposed layout) combine the same way
    torch.manual_seed(1)
    model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 3))
    ids = torch.tensor([[1, 2, 3], [7, 8, 9]])
    base = {k: v.clone() for k, v in model.state_dict().items()}
    named = studio.NamedAdapters(model, ids)
    line = (
        "(LoRA.adapt_output, r={r}): ...->(0){{inout1}}->...\n"
        "(LoRA.adapt_weight, r={r}, alpha=3): ...->(1){{inout2}}->..."
    )
    named.add("a", line.format(r=2))
    named.add("b", line.format(r=1))
    _randomize(named, "a", 9)
    _randomize(named, "b", 10)
    deltas = {
        n: {p.target.module: a.delta().detach().clone() for p, a in named._adapters[n].objects.items()}
        for n in ("a", "b")
    }
    named.add_weighted_adapter("ab", {"a": 2.0, "b": 0.5}, activate=True)
    assert named.active == "ab"
    named.attachment.merge()
    for layer in ("0", "1"):
        want = base[f"{layer}.weight"] + 2.0 * deltas["a"][layer] + 0.5 * deltas["b"][layer]
        assert (model.state_dict()[f"{layer}.weight"] - want).abs().max().item() < 1e-6
    named.disable()
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


def test_trainable_table_and_header_say_which_adapter_is_active(net):
    model, _ = net
    assert not studio.trainable_table(model).startswith("Active adapter")
    named = studio.NamedAdapters(model)
    assert (
        studio.trainable_table(model).splitlines()[0] == "Active adapter: none (the bare model runs) "
        "(adapters: none yet)"
    )
    named.add("a", LORA_A)
    named.add("b", LORA_B + "\ntrainable(head)")
    table = studio.trainable_table(model)
    assert table.splitlines()[0] == "Active adapter: 'a' (adapters: a*, b)"
    assert "head.weight" not in table
    named.set_active("b")
    table = studio.trainable_table(model)
    assert table.splitlines()[0] == "Active adapter: 'b' (adapters: a, b*)"
    assert "head.weight" in table  # b's rows: its LoRA and the head it keeps trainable
    b_count = sum(a.lora_A.numel() + a.lora_B.numel() for a in named._adapters["b"].objects.values())
    rows = [line for line in table.splitlines() if line.startswith("| addins.")]
    assert sum(int(r.split("|")[4].strip().replace(",", "")) for r in rows) == b_count
    named.disable()
    assert studio.trainable_table(model).splitlines()[0].startswith("Active adapter: none")


def test_update_keeps_unchanged_add_ins_and_notifies_listeners(net):
    model, x = net
    named = studio.NamedAdapters(model)
    calls = []
    stop = named.on_change(lambda: calls.append(named.active))
    named.add("a", LORA_A + "\ntrainable(head)")
    named.add("b", LORA_B)
    _randomize(named, "a", 1)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # a's trained head
    conv_a = next(a for p, a in named._adapters["a"].objects.items() if p.target.module == "conv")
    trained_head = model.head.weight.detach().clone()
    named.set_active("b")
    # a is inactive: update it to drop fc's LoRA; conv's LoRA keeps its object, the head its value
    named.update("a", "(LoRA.adapt_output, r=2): ...->(conv){inout1}->...\ntrainable(head)")
    assert named.active == "b"
    named.set_active("a")
    assert [p.target.module for p in named.config("a").placements] == ["conv"]
    assert next(iter(named._adapters["a"].objects.values())) is conv_a
    assert torch.equal(model.head.weight, trained_head)
    with named.disabled():
        bare = model(x)
    assert not torch.equal(model(x), bare)
    assert len(model.fc._forward_hooks) == 0 and len(model.conv._forward_hooks) == 1
    # a bad update leaves everything as it was
    before = model(x).detach().clone()
    with pytest.raises(studio.ConfigError, match="fc9"):
        named.update("a", "(LoRA.adapt_output, r=2): ...->(fc9){inout1}->...")
    with pytest.raises(ValueError, match=r"remove\('a'\)"):
        named.update("a", "")
    assert named.active == "a" and torch.equal(model(x), before)
    assert calls == ["a", "a", "b", "b", "a"]
    stop()
    named.disable()
    assert calls == ["a", "a", "b", "b", "a"]


def test_saving_an_inactive_adapter_switches_nothing_a_listener_sees(net, tmp_path):
    model, x = net
    named = studio.NamedAdapters(model)
    named.add("a", LORA_A)
    named.add("b", LORA_B)
    _randomize(named, "b", 3)
    calls = []
    named.on_change(lambda: calls.append(named.active))
    out_a = model(x)
    named.save("b", tmp_path / "b.safetensors")
    assert calls == [] and named.active == "a" and torch.equal(model(x), out_a)
    with named.disabled():
        fresh = copy.deepcopy(model)  # the bare model
    with studio.load(fresh, tmp_path / "b.safetensors"):
        named.set_active("b")
        torch.testing.assert_close(fresh(x), model(x))
