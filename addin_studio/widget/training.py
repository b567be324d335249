"""Training from the widget: a worker thread, a stop event, and a registry of active runs.

Measured in JupyterLab 4.6 / ipykernel 7 (see the team notes): the click handler only starts a daemon
thread; ``Trainer.stop()`` sets an event checked between steps; the worker never touches traits
or prints, it hands snapshots to ``dispatch`` (the widget schedules them on the kernel's loop).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

from ..train import Trainer
from ..train.callbacks import Callback
from ..render.plot import series

UPDATE_INTERVAL_S = 0.25      # at most 4 plot updates a second (>= 2/s while steps complete)

_ACTIVE: list["TrainingRun"] = []
_LOCK = threading.Lock()


def stop_all(wait_s: float = 5.0) -> None:
    """Stop every run started by any Studio (a new Studio or ``close()`` calls this)."""
    with _LOCK:
        runs = list(_ACTIVE)
    for run in runs:
        run.stop()
    for run in runs:
        run.join(wait_s)


class _Relay(Callback):
    """Collects the series on the worker thread and hands bounded snapshots to the widget."""

    def __init__(self, run: "TrainingRun") -> None:
        self.run = run
        self.last = 0.0

    def on_step(self, trainer: Any, step: int, logs: dict) -> None:
        self.run.losses.append(float(logs["loss"]))
        now = time.perf_counter()
        if now - self.last >= UPDATE_INTERVAL_S:
            self.last = now
            self.run.publish(trainer)

    def on_epoch(self, trainer: Any, epoch: int, logs: dict) -> None:
        # a new validation point is always shown; otherwise the update rate stays bounded
        now = time.perf_counter()
        if "val_acc1" in logs:
            self.run.val_acc.append((trainer.step, float(logs["val_acc1"])))
        elif now - self.last < UPDATE_INTERVAL_S:
            return
        self.last = now
        self.run.publish(trainer)


class TrainingRun:
    """One ``Trainer.fit()`` on a daemon thread. ``on_update(snapshot)`` and ``on_done(run)`` are
    called through ``dispatch`` (a function that runs a callable on the widget's thread)."""

    def __init__(self, make_trainer: Callable[[list], Trainer], dispatch: Callable[..., None],
                 on_update: Callable[[dict], None], on_done: Callable[["TrainingRun"], None]) -> None:
        self.losses: list[float] = []
        self.val_acc: list[tuple[int, float]] = []
        self.trainer = make_trainer([_Relay(self)])   # errors in the options raise here, in the handler
        self.dispatch = dispatch
        self.on_update = on_update
        self.on_done = on_done
        self.history: dict = {}
        self.error: BaseException | None = None
        self.started = self.finished = 0.0
        self._thread = threading.Thread(target=self._work, name="addin-studio-train", daemon=True)

    def start(self) -> None:
        with _LOCK:
            _ACTIVE.append(self)
        self.started = time.perf_counter()
        self._thread.start()

    def stop(self) -> None:
        self.trainer.stop()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def snapshot(self, trainer: Trainer) -> dict:
        data = series(self.losses, self.val_acc, trainer.total_steps)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        loss = self.losses[-1] if self.losses else float("nan")
        data["status"] = (f"training: step {trainer.step}/{trainer.total_steps} · epoch {trainer.epoch}"
                          f"/{trainer.epochs} · loss {loss:.4f} · {trainer.step / elapsed:.1f} steps/s")
        return data

    def publish(self, trainer: Trainer) -> None:
        self.dispatch(self.on_update, self.snapshot(trainer))

    def summary(self) -> str:
        t, steps = self.finished - self.started, self.trainer.step
        if self.error is not None:
            return f"failed at step {steps + 1}: {self.error}"
        word = "stopped" if self.trainer.stopped else "finished"
        text = f"{word}: {steps} steps in {t:.1f} s"
        if self.losses and math.isfinite(self.losses[-1]):
            text += f" · last loss {self.losses[-1]:.4f}"
        if self.val_acc:
            text += f" · val Acc@1 {self.val_acc[-1][1]:.2f}%"
        return text

    def _work(self) -> None:
        try:
            self.history = self.trainer.fit()
        except BaseException as exc:  # reported in the widget; a worker must never die silently
            self.error = exc
            self.history = dict(self.trainer.history)
        finally:
            self.finished = time.perf_counter()
            with _LOCK:
                if self in _ACTIVE:
                    _ACTIVE.remove(self)
            self.dispatch(self.on_done, self)
