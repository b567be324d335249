"""Trainer behaviour on small synthetic tasks (CPU, a few seconds)."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from addin_studio.sources.data import synthetic_classification
from addin_studio.train import Callback, LambdaCallback, Trainer


def _loaders(n=256, classes=4, batch=32, seed=0):
    ds = synthetic_classification(n, num_features=8, num_classes=classes, seed=seed, noise=0.3)
    return (
        DataLoader(ds, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0)),
        DataLoader(ds, batch_size=64),
    )


def _mlp(classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, classes))


def test_loss_decreases_and_accuracy_rises():
    train, val = _loaders()
    model = _mlp()
    trainer = Trainer(model, train, val, epochs=5, lr=1e-2, progress=False, seed=0)
    before = trainer.test()
    history = trainer.fit()
    assert len(history["loss"]) == 5 * len(train) == len(history["lr"])
    first, last = sum(history["loss"][:4]) / 4, sum(history["loss"][-4:]) / 4
    assert last < 0.5 * first
    assert len(history["val_acc1"]) == len(history["val_acc5"]) == len(history["val_loss"]) == 5
    after = trainer.test()
    assert after["acc1"] > 95 and after["acc1"] > before["acc1"] + 30
    assert after["acc5"] == 100.0  # 4 classes: the top 5 always hold the target
    assert after == pytest.approx(
        {"acc1": history["val_acc1"][-1], "acc5": history["val_acc5"][-1], "loss": history["val_loss"][-1]}
    )


def test_seed_makes_runs_reproducible():
    runs = []
    for _ in range(2):
        train, _ = _loaders()
        model = _mlp()
        runs.append(Trainer(model, train, epochs=1, progress=False, seed=3).fit()["loss"])
    assert runs[0] == runs[1]


def test_only_trainable_parameters_change():
    train, _ = _loaders()
    model = _mlp()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    head = model[2].weight.detach().clone()
    trainer = Trainer(model, train, epochs=1, progress=False)
    assert all(p.requires_grad for p in trainer.optimizer.param_groups[0]["params"])
    assert len(trainer.optimizer.param_groups[0]["params"]) == 3
    trainer.fit()
    assert torch.equal(model[0].weight, frozen)
    assert not torch.equal(model[2].weight, head)


def test_nothing_trainable_is_a_clear_error():
    train, _ = _loaders()
    model = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad"):
        Trainer(model, train, progress=False)


class _NaNAt(nn.Module):
    """Adds NaN to the output on the n-th training forward (1-based)."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == self.n:
                out = out + float("nan")
        return out


def test_nan_loss_raises_naming_the_step_and_keeps_parameters():
    train, _ = _loaders()
    model = _NaNAt(_mlp(), n=3)
    ended = []
    trainer = Trainer(
        model,
        train,
        epochs=1,
        progress=False,
        callbacks=[
            LambdaCallback(
                on_step=lambda tr, step, logs: snapshots.append(
                    {k: v.detach().clone() for k, v in model.state_dict().items()}
                ),
                on_end=lambda tr, h: ended.append(tr.error),
            )
        ],
    )
    snapshots = []
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 3 \(epoch 1, batch 2\)"):
        trainer.fit()
    assert len(snapshots) == 2 and trainer.step == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[-1][k]), k
    assert isinstance(ended[0], FloatingPointError)
    assert len(trainer.history["loss"]) == 2


def test_stop_ends_after_the_current_step():
    train, val = _loaders()
    steps = []

    class StopAt(Callback):
        armed = True

        def on_step(self, trainer, step, logs):
            steps.append(step)
            if step == 3 and self.armed:
                trainer.stop()

    epochs = []
    trainer = Trainer(
        _mlp(),
        train,
        val,
        epochs=3,
        progress=False,
        callbacks=[StopAt(), LambdaCallback(on_epoch=lambda t, e, logs: epochs.append(e))],
    )
    history = trainer.fit()
    assert steps == [1, 2, 3] and len(history["loss"]) == 3
    assert trainer.stopped and epochs == [] and history["val_acc1"] == []
    # the request is consumed: a new fit runs in full
    trainer.callbacks[0].armed = False
    history = trainer.fit()
    assert not trainer.stopped and len(history["loss"]) == 3 * len(train) and epochs == [1, 2, 3]


def test_stop_before_fit_makes_no_step():
    train, _ = _loaders(n=64)
    trainer = Trainer(_mlp(), train, epochs=2, progress=False)
    trainer.stop()
    assert trainer.fit()["loss"] == [] and trainer.stopped


def test_stop_from_another_thread():
    ds = synthetic_classification(4096, num_features=8, num_classes=4)
    train = DataLoader(ds, batch_size=1)
    started = threading.Event()
    trainer = Trainer(
        _mlp(),
        train,
        epochs=50,
        progress=False,
        callbacks=[LambdaCallback(on_step=lambda t, s, logs: started.set())],
    )
    result = {}
    worker = threading.Thread(target=lambda: result.update(h=trainer.fit()))
    worker.start()
    assert started.wait(30)
    trainer.stop()
    worker.join(30)
    assert not worker.is_alive()
    assert trainer.stopped and 0 < len(result["h"]["loss"]) < 50 * 4096


def test_callback_order_and_logs():
    train, val = _loaders(n=64, batch=32)
    events = []

    class Rec(Callback):
        def on_fit_start(self, t):
            events.append("fit_start")

        def on_epoch_start(self, t, e):
            events.append(f"epoch_start {e}")

        def on_step(self, t, s, logs):
            events.append(f"step {s}")
            assert set(logs) >= {"loss", "lr", "grad_norm", "epoch", "batch", "step", "time"}
            assert logs["step"] == s == t.step

        def on_epoch(self, t, e, logs):
            events.append(f"epoch {e}")
            assert set(logs) >= {"epoch", "train_loss", "val_acc1", "val_acc5", "val_loss", "time", "best"}

        def on_end(self, t, h):
            events.append("end")

    Trainer(_mlp(), train, val, epochs=2, progress=False, callbacks=[Rec()]).fit()
    assert events == [
        "fit_start",
        "epoch_start 1",
        "step 1",
        "step 2",
        "epoch 1",
        "epoch_start 2",
        "step 3",
        "step 4",
        "epoch 2",
        "end",
    ]


def test_max_steps_limits_the_run_and_the_schedule():
    train, _ = _loaders()
    trainer = Trainer(_mlp(), train, epochs=10, max_steps=5, lr=0.1, scheduler="cosine", progress=False)
    history = trainer.fit()
    assert len(history["loss"]) == 5 and trainer.total_steps == 5
    assert history["lr"][0] == pytest.approx(0.1)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_refit_restarts_the_schedule():
    train, _ = _loaders(n=64)
    trainer = Trainer(_mlp(), train, epochs=1, lr=0.1, scheduler="cosine", progress=False)
    h1 = trainer.fit()
    h2 = trainer.fit()
    assert h1["lr"] == pytest.approx(h2["lr"])


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_named_optimizers(name):
    train, _ = _loaders(n=64)
    trainer = Trainer(_mlp(), train, optimizer=name, progress=False)
    assert type(trainer.optimizer).__name__.lower() == name
    trainer.fit()


def test_optimizer_object_and_factory():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train, _ = _loaders(n=64)
    trainer = Trainer(model, train, optimizer=opt, scheduler="constant", progress=False)
    assert trainer.optimizer is opt
    assert trainer.fit()["lr"] == [0.5, 0.5]
    trainer = Trainer(
        _mlp(), train, optimizer=lambda ps: torch.optim.Adam(ps, lr=0.2), scheduler=None, progress=False
    )
    assert trainer.fit()["lr"] == [0.2, 0.2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"optimizer": "lion"}, "unknown optimizer 'lion'; choose one of adam, adamw, sgd"),
        ({"scheduler": "linear"}, "unknown scheduler 'linear'; choose one of cosine, step, constant"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"lr": -1}, "lr must be > 0"),
        ({"amp": "fp8"}, "unknown amp 'fp8'"),
        ({"amp": "fp16", "device": "cpu"}, "amp='fp16' needs a CUDA device"),
        ({"grad_clip": 0}, "grad_clip must be > 0"),
        ({"callbacks": [object()]}, "has none of the methods"),
    ],
)
def test_bad_arguments(kwargs, match):
    train, _ = _loaders(n=64)
    with pytest.raises((ValueError, TypeError), match=match):
        Trainer(_mlp(), train, progress=False, **kwargs).fit()


def test_empty_loader_and_test_without_loader():
    with pytest.raises(ValueError, match="train_loader is empty"):
        Trainer(_mlp(), [], progress=False)
    train, _ = _loaders(n=64)
    with pytest.raises(ValueError, match="test\\(\\) needs a loader"):
        Trainer(_mlp(), train, progress=False).test()


def test_grad_clip_bounds_the_update():
    train, _ = _loaders(n=64, batch=64)
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        model,
        train,
        optimizer="sgd",
        momentum=0.0,
        lr=1.0,
        grad_clip=1e-3,
        scheduler="constant",
        progress=False,
    )
    logs = []
    trainer.callbacks.append(LambdaCallback(on_step=lambda t, s, lg: logs.append(lg)))
    trainer.fit()
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert logs[0]["grad_norm"] > 1e-3  # the raw norm is reported, and it was clipped
    assert float(moved) == pytest.approx(1e-3, rel=1e-3)


def test_bf16_autocast_on_cpu_trains():
    train, val = _loaders()
    trainer = Trainer(_mlp(), train, val, epochs=3, lr=1e-2, amp=True, device="cpu", progress=False)
    assert trainer.amp_dtype == torch.bfloat16
    history = trainer.fit()
    assert history["val_acc1"][-1] > 90


def test_batches_as_tuple_or_dict_inputs_and_hf_like_outputs():
    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, a, b=None):
            class Out:
                pass

            o = Out()
            o.logits = self.fc(a + (0 if b is None else b))
            return o

    x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))
    t = Trainer(TwoIn(), [((x, x), y)], progress=False)
    assert len(t.fit()["loss"]) == 1
    t = Trainer(TwoIn(), [({"a": x, "b": x}, y)], progress=False)
    assert t.test([({"a": x}, y)])["acc5"] == 100.0
    with pytest.raises(TypeError, match="expected batches of \\(inputs, targets\\)"):
        Trainer(TwoIn(), [(x, y, y)], progress=False).fit()


def test_progress_bar_writes_epoch_loss_lr_and_accuracy():
    import io

    from addin_studio.train import ProgressBar

    buf = io.StringIO()
    train, val = _loaders(n=64)
    Trainer(_mlp(), train, val, epochs=2, progress=False, callbacks=[ProgressBar(file=buf)]).fit()
    text = buf.getvalue()
    for part in ("Epoch 1/2", "Epoch 2/2", "mem=", "loss=", "acc@1=", "acc@5="):
        assert part in text, part


def test_best_epoch_checkpoint_without_attachment(tmp_path):
    from safetensors.torch import load_file

    train, val = _loaders()
    model = _mlp()
    best = []
    trainer = Trainer(
        model,
        train,
        val,
        epochs=3,
        lr=1e-2,
        progress=False,
        checkpoint_dir=tmp_path,
        callbacks=[
            LambdaCallback(
                on_epoch=lambda t, e, logs: best.append(
                    (logs["best"], {k: v.detach().clone() for k, v in model.named_parameters()})
                )
            )
        ],
    )
    history = trainer.fit()
    accs = history["val_acc1"]
    assert trainer.best_epoch == 1 + max(range(3), key=lambda i: (accs[i], -i))
    assert trainer.best_checkpoint == tmp_path / "best.safetensors"
    saved = load_file(str(trainer.best_checkpoint))
    expected = best[trainer.best_epoch - 1][1]
    assert set(saved) == set(expected)
    for k in saved:
        assert torch.equal(saved[k], expected[k])
