"""Frozen means frozen: BatchNorm running statistics while add-ins train, and what the files ship.

A BatchNorm of a frozen base normalizes with its running statistics in training too and never updates
them (any training loop: the Trainer, a plain loop calling ``model.train()``); ``running_stats(...)`` (or
trained norm parameters) makes the statistics follow the data instead, and then they ship: saved,
loaded, exported to PEFT, shown in the trainable table, restored at detach.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import addin_studio as studio
from addin_studio.engine.norm_stats import stats_frozen

X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
Y = torch.randint(0, 4, (6,), generator=torch.Generator().manual_seed(4))
LORA = "(LoRA.adapt_output, r=2, layout=peft): ...->(conv){inout1}->...\n"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, momentum=None))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feat = nn.BatchNorm1d(8, affine=False)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.block(torch.relu(self.bn(self.conv(x))))
        return self.head(self.feat(self.pool(h).flatten(1)))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # statistics that are not the defaults, as a pre-trained model's
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(100)
    return net.eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(model, att, steps=3, loop="trainer", tmp_path=None):
    if loop == "trainer":
        trainer = studio.Trainer(
            model,
            [(X, Y)] * steps,
            epochs=1,
            lr=0.05,
            progress=False,
            attachment=att,
            checkpoint_dir=tmp_path,
        )
        trainer.fit()
        return trainer
    opt = torch.optim.SGD(att.parameters(), lr=0.05)
    for _ in range(steps):
        model.train()
        loss = nn.functional.cross_entropy(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return None


def _eval(model):
    model.eval()
    with torch.no_grad():
        return model(X)


def _max_rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("loop", ["trainer", "plain loop"])
def test_frozen_batchnorm_keeps_its_statistics_and_detach_is_bit_exact(loop, tmp_path):
    model = _net()
    state = _state(model)
    att = studio.attach(model, LORA, example_input=X)
    assert all(stats_frozen(m) for m in (model.bn, model.block[1], model.feat))
    _train(model, att, loop=loop, tmp_path=tmp_path)
    for name, v in model.state_dict().items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(v, state[name]), name
    # in training the layers normalize with the running statistics, as in eval mode
    model.train()
    with torch.no_grad():
        assert torch.equal(model(X), _eval(model))
    assert model.bn.training is False and model.training is False  # _eval switched it; flags follow
    model.train()
    assert model.bn.training is True  # model.train() still reaches every layer's flag
    att.detach()
    assert not any(stats_frozen(m) for m in model.modules())
    assert _state(model).keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    # after detach, BatchNorm trains as usual again
    model.train()
    model(X)
    assert not torch.equal(model.bn.running_mean, state["bn.running_mean"])


@pytest.mark.parametrize("extra", ["", "running_stats(bn, block)\n", "trainable(bn)\n"])
def test_every_file_reproduces_the_trained_model(extra, tmp_path):
    peft = pytest.importorskip("peft")
    model = _net()
    state = _state(model)
    att = studio.attach(model, LORA + extra, example_input=X)
    trainer = _train(model, att, tmp_path=tmp_path)
    trained = _eval(model)
    moved = [
        n
        for n, v in model.state_dict().items()
        if n.endswith("running_mean") and not torch.equal(v, state[n])
    ]
    assert moved == (
        []
        if not extra
        else ["bn.running_mean"]
        if "trainable" in extra
        else ["bn.running_mean", "block.1.running_mean"]
    )
    att.save(tmp_path / "a.safetensors")
    for path in (tmp_path / "a.safetensors", trainer.best_checkpoint):
        fresh = _net()
        with studio.load(fresh, path):
            assert _max_rel(_eval(fresh), trained) <= 1e-5
    att.export_peft(tmp_path / "peft")
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["modules_to_save"]
    assert saved == (None if not extra else ["bn"] if "trainable" in extra else ["block.1", "bn"])
    pm = peft.PeftModel.from_pretrained(_net(), str(tmp_path / "peft")).eval()
    with torch.no_grad():
        assert _max_rel(pm(X), trained) <= 1e-5
    back = _net()
    with studio.from_peft(back, tmp_path / "peft", modules_to_save=True):
        assert _max_rel(_eval(back), trained) <= 1e-5
    att.detach()
    assert all(
        torch.equal(v, state[k])
        for k, v in model.state_dict().items()
        if "running" in k or "num_batches" in k
    )


def test_running_stats_is_written_in_the_string_and_shown_in_the_table():
    model = _net()
    att = studio.attach(model, LORA + "running_stats(block[1], feat)")
    assert str(att.config).splitlines()[-1] == "running_stats(block[1], feat)"
    assert studio.parse(str(att.config)) == att.config
    assert sorted(att.statistics()) == [
        "block.1.num_batches_tracked",
        "block.1.running_mean",
        "block.1.running_var",
        "feat.num_batches_tracked",
        "feat.running_mean",
        "feat.running_var",
    ]
    table = studio.trainable_table(model)
    assert "| block.1.running_var " in table and "BatchNorm2d (statistics)" in table
    assert "bn.running_var" not in table
    assert stats_frozen(model.bn) and not stats_frozen(model.feat)
    att.detach()
    assert "(statistics)" not in studio.trainable_table(model)


def test_running_stats_alone_adapts_statistics_to_new_data_and_detach_restores_them():
    model = _net()
    state = _state(model)
    att = studio.attach(model, "running_stats(*)")  # AdaBN: no add-in, only the statistics follow
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    with torch.no_grad():
        model(X)
    assert not torch.equal(model.bn.running_mean, state["bn.running_mean"])
    att.detach()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_running_stats_pattern_naming_no_norm_layer_is_an_error_and_the_model_is_untouched():
    model = _net()
    state = _state(model)
    text = LORA + "running_stats(bn, hed)"
    with pytest.raises(studio.ConfigError) as info:
        studio.attach(model, text)
    err = info.value
    assert "running_stats pattern 'hed' names no normalization layer with running statistics in Net" in str(
        err
    )
    assert err.position == text.index("hed")
    assert not any(stats_frozen(m) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters()) and not hasattr(model, "addins")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_stacked_attachments_keep_the_statistics_frozen_until_the_last_detach():
    model = _net()
    state = _state(model)
    first = studio.attach(model, LORA)
    second = studio.attach(model, "(LoRA.adapt_output, r=2): ...->(head){inout1}->...")
    first.detach()
    assert stats_frozen(model.bn)
    model.train()
    with torch.no_grad():
        model(X)
    assert torch.equal(model.bn.running_mean, state["bn.running_mean"])
    assert model.bn.training  # the flag is the model's again after each forward
    second.detach()
    assert not stats_frozen(model.bn)


def test_a_file_with_statistics_of_a_frozen_layer_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    model = _net()
    with studio.attach(model, LORA + "running_stats(bn)") as att:
        att.save(tmp_path / "a.safetensors")
    tensors = load_file(tmp_path / "a.safetensors")
    with safe_open(tmp_path / "a.safetensors", "pt") as f:
        meta = f.metadata()
    tensors["stats.feat.running_mean"] = torch.zeros(8)
    save_file(tensors, tmp_path / "b.safetensors", metadata=meta)
    fresh = _net()
    state = _state(fresh)
    with pytest.raises(
        ValueError,
        match="tensor 'stats.feat.running_mean' is the running statistics of a "
        "layer whose statistics its config keeps fixed",
    ):
        studio.load(fresh, tmp_path / "b.safetensors")
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())
    assert not any(stats_frozen(m) for m in fresh.modules()) and not hasattr(fresh, "addins")


def test_deep_copy_and_pickle_of_an_attached_model_keep_the_statistics_frozen():
    import pickle

    model = _net()
    att = studio.attach(model, LORA)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        clone.train()
        before = clone.bn.running_mean.clone()
        with torch.no_grad():
            clone(X)
        assert torch.equal(clone.bn.running_mean, before)
        assert clone.bn.training
    att.detach()


def test_lightning_loop_keeps_the_frozen_statistics_and_its_adapter_file_reproduces_the_model(tmp_path):
    L = pytest.importorskip("lightning")
    model = _net()
    state = _state(model)
    att = studio.attach(model, LORA, example_input=X)
    params = list(att.parameters())

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.model(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(params, lr=0.05)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=3)
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Module(), loader)
    assert trainer.global_step == 4
    for name, v in model.state_dict().items():
        if name in state:
            assert torch.equal(v, state[name]), name  # base weights and statistics alike
    trained = _eval(model)
    assert _max_rel(trained, _eval(_net())) > 1e-4
    att.save(tmp_path / "a.safetensors")
    fresh = _net()
    with studio.load(fresh, tmp_path / "a.safetensors"):
        assert torch.equal(_eval(fresh), trained)


def test_every_kind_of_batchnorm_is_recognised_timm_batchnormact_and_syncbatchnorm():
    timm = pytest.importorskip("timm")
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3).eval()
    kinds = {type(m).__name__ for m in model.modules() if hasattr(m, "running_mean")}
    assert "BatchNormAct2d" in kinds
    with studio.attach(model, studio.strategies.lora(model, ["classifier"], r=2)):
        norms = [m for m in model.modules() if getattr(m, "running_mean", None) is not None]
        assert len(norms) == 49 and all(stats_frozen(m) for m in norms)
    # SyncBatchNorm trains in one CPU process once frozen: it normalizes as in eval mode, no process group
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with studio.attach(net, "(LoRA.adapt_output, r=2): ...->([3]){inout1}->...") as att:
        net.train()
        loss = net(X).square().mean()
        loss.backward()
        assert att.addins["LoRA_3"].lora_B.grad is not None
