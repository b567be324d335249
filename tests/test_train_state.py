"""Training state stays consistent: BatchNorm buffers after a non-finite batch, the first error wins,
the best epoch's record and file agree, no orphaned temporary files, one fit per model at a time."""

from __future__ import annotations

import signal
import threading

import pytest
import torch
from torch import nn

import addin_studio.train.trainer as trainer_module
from addin_studio.checkpoint.files import atomic_write
from addin_studio.train import LambdaCallback, Trainer


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _batches(n=4, nan_at=None):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randn(6, 4, generator=g)
        if i == nan_at:
            x[2, 1] = float("nan")
        out.append((x, torch.randint(0, 3, (6,), generator=g)))
    return out


def _buffers(model):
    return {k: v.clone() for k, v in model.named_buffers()}


def test_non_finite_batch_leaves_batchnorm_buffers_as_they_were():
    model = _bn_model()
    seen = {}
    cb = LambdaCallback(on_step=lambda t, step, logs: seen.setdefault(step, _buffers(model)))
    trainer = Trainer(model, _batches(nan_at=2), epochs=1, lr=0.1, callbacks=[cb], progress=False)
    with pytest.raises(FloatingPointError, match="step 3"):
        trainer.fit()
    after = _buffers(model)
    assert after["1.num_batches_tracked"].item() == 2
    for k, v in seen[2].items():
        assert torch.equal(after[k], v), k
    assert torch.isfinite(after["1.running_mean"]).all()


class EndFails:
    def __init__(self, log):
        self.log = log

    def on_end(self, trainer, history):
        self.log.append("fails")
        raise RuntimeError("callback broke in on_end")


class EndRuns:
    def __init__(self, log):
        self.log = log

    def on_end(self, trainer, history):
        self.log.append("runs")


def test_the_first_error_wins_over_a_callbacks_on_end():
    log = []
    trainer = Trainer(
        _bn_model(), _batches(nan_at=1), callbacks=[EndFails(log), EndRuns(log)], progress=False
    )
    with pytest.raises(FloatingPointError) as e:
        trainer.fit()
    assert log == ["fails", "runs"]  # every on_end still ran
    assert any("callback broke in on_end" in n for n in getattr(e.value, "__notes__", []))
    assert trainer.error is e.value


def test_a_callback_error_is_raised_when_training_succeeded():
    log = []
    trainer = Trainer(_bn_model(), _batches(), callbacks=[EndFails(log), EndRuns(log)], progress=False)
    with pytest.raises(RuntimeError, match="callback broke in on_end"):
        trainer.fit()
    assert log == ["fails", "runs"]
    assert not trainer.fitting


def _stage_files(d):
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name)


def test_interrupted_best_save_keeps_record_and_file_in_step(tmp_path, monkeypatch):
    val = _batches(2)
    trainer = Trainer(
        _bn_model(), _batches(), val, epochs=3, lr=0.05, checkpoint_dir=tmp_path, progress=False
    )
    real = trainer_module.save_trainable
    calls = []

    def interrupted(model, path):
        calls.append(path)
        if len(calls) == 2:  # the second best epoch: written, then Ctrl-C before it is recorded
            real(model, path)
            raise KeyboardInterrupt
        return real(model, path)

    monkeypatch.setattr(trainer_module, "save_trainable", interrupted)
    # make every epoch a new best so the second save happens in epoch 2
    monkeypatch.setattr(
        Trainer, "evaluate", lambda self, loader: {"acc1": float(self.epoch), "acc5": 100.0, "loss": 1.0}
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.best_epoch == 1
    best = tmp_path / "best.safetensors"
    from safetensors.torch import load_file

    saved_epoch1 = load_file(str(best))
    assert set(saved_epoch1) == {n for n, p in trainer.model.named_parameters()}
    assert _stage_files(tmp_path) == []  # the staged file of epoch 2 is gone
    assert trainer.best_checkpoint == best


@pytest.fixture
def sigint_deliverable():
    """SIGINT unblocked in this (the main) thread for the test; the previous mask comes back after.

    ``signal.raise_signal`` sends the signal to the calling thread, and CPython runs the Python-level
    handler before ``raise_signal`` returns: the point where a handler must have run is fixed, so these
    tests do not depend on when the operating system schedules anything.
    """
    assert threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, old)


def test_interrupts_are_held_while_the_record_is_written(sigint_deliverable):
    order = []
    # the synchronization point is real: unheld, Ctrl-C raises inside raise_signal itself
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
        order.append("not reached")
    assert order == []
    with pytest.raises(KeyboardInterrupt):
        with trainer_module._interrupts_held():
            signal.raise_signal(signal.SIGINT)  # the handler has run when this returns: held, not raised
            order.append("still running")
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C is held too (and raised once)
            order.append("block finished")
        order.append("not reached")
    assert order == ["still running", "block finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's handler is back


def test_held_interrupts_go_to_the_previous_handler(sigint_deliverable):
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with trainer_module._interrupts_held():
            signal.raise_signal(signal.SIGINT)
            assert seen == []  # held
        assert seen == [signal.SIGINT]  # a custom handler is called once, after the block
        seen.clear()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with trainer_module._interrupts_held():  # an ignored Ctrl-C stays ignored
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        with trainer_module._interrupts_held():  # no Ctrl-C: nothing is raised
            pass
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == []


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"x" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and _stage_files(tmp_path) == []
    # a file left by a process that was killed outright (a dead pid) goes with the next save
    dead = tmp_path / ".f.bin.tmp-999999999"
    dead.write_bytes(b"x" * 1000)
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and _stage_files(tmp_path) == []


class _Gate:
    """A loader whose first batch waits until released (so a fit is surely running)."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def __len__(self):
        return 1

    def __iter__(self):
        self.entered.set()
        self.release.wait(10)
        yield from _batches(1)


@pytest.mark.parametrize("same_trainer", [True, False])
def test_a_second_train_intent_is_refused_from_any_thread(same_trainer):
    for _ in range(10):
        model = _bn_model()
        gates = [_Gate(), _Gate()]
        trainers = [Trainer(model, gates[0], progress=False)]
        trainers.append(trainers[0] if same_trainer else Trainer(model, gates[1], progress=False))
        barrier = threading.Barrier(2)
        results = [None, None]

        def run(i):
            barrier.wait()
            try:
                trainers[i].fit()
                results[i] = "ran"
            except RuntimeError as exc:
                results[i] = str(exc)
            finally:
                for g in gates:
                    g.release.set()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(r == "ran" for r in results) == [False, True], results
        refused = next(r for r in results if r != "ran")
        assert "already running" in refused or "already being trained" in refused
    # once it ended, the model can be trained again
    Trainer(model, _batches(1), progress=False).fit()
