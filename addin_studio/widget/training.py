"""Training from the widget: a worker thread, a stop event, and a registry of active runs.

Measured in JupyterLab 4.6 / ipykernel 7 (see the team notes): the click handler only starts a daemon
thread; ``Trainer.stop()`` sets an event checked between steps; the worker never touches traits
or prints, it hands snapshots to ``dispatch`` (the widget schedules them on the kernel's loop).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Sequence

import torch

from ..train import Trainer
from ..train.callbacks import Callback
from ..render.plot import series

UPDATE_INTERVAL_S = 0.25  # at most 4 plot updates a second (>= 2/s while steps complete)

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


class UpdateNorms:
    """Where learning happens: the norm of each add-in's parameter change per step, between samples.

    ``entries`` are ``(key, placement, addin)`` (``Attachment.entries``). Sampling copies the add-ins'
    parameters (only at the plot's rate), so the cost per training step is nil.
    """

    def __init__(self, entries: Sequence[tuple[str, Any, torch.nn.Module]]) -> None:
        self.entries = [(k, p, [q for q in a.parameters() if q.requires_grad]) for k, p, a in entries]
        self.entries = [e for e in self.entries if e[2]]
        self._prev = self._copy()
        self._step = 0
        self.last: dict[str, float] = {}

    def _copy(self) -> dict[str, list[torch.Tensor]]:
        with torch.no_grad():
            return {k: [q.detach().clone() for q in ps] for k, _, ps in self.entries}

    def sample(self, step: int) -> dict[str, float]:
        """``{key: norm of the change since the last sample / steps}``; {} when no step was taken."""
        steps = step - self._step
        if steps <= 0:
            return dict(self.last)
        now = self._copy()
        out = {}
        for key, _, _ in self.entries:
            total = sum(
                float((a.float() - b.float()).pow(2).sum()) for a, b in zip(now[key], self._prev[key])
            )
            out[key] = math.sqrt(total) / steps
        self._prev, self._step, self.last = now, step, out
        return dict(out)

    def by_point(self, norms: dict[str, float]) -> dict[str, float]:
        """The largest norm of the add-ins at each point (``"fc1:post"``) they read or write."""
        out: dict[str, float] = {}
        for key, p, _ in self.entries:
            if key not in norms:
                continue
            for point in {str(p.source), str(p.target)}:
                out[point] = max(out.get(point, 0.0), norms[key])
        return out

    def table(self) -> list[dict]:
        """One row per add-in: key, where it sits, its last sampled update norm."""
        return [
            {
                "key": k,
                "placement": f"{p.addin}.{p.method} at {p.target}"
                + (f" (from {p.source})" if p.source != p.target else ""),
                "norm": self.last.get(k, 0.0),
            }
            for k, p, _ in self.entries
        ]


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

    def __init__(
        self,
        make_trainer: Callable[[list], Trainer],
        dispatch: Callable[..., None],
        on_update: Callable[[dict], None],
        on_done: Callable[["TrainingRun"], None],
        entries: Sequence[tuple[str, Any, torch.nn.Module]] = (),
    ) -> None:
        self.norms = UpdateNorms(entries)
        self.losses: list[float] = []
        self.val_acc: list[tuple[int, float]] = []
        self.trainer = make_trainer([_Relay(self)])  # errors in the options raise here, in the handler
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
        norms = self.norms.sample(trainer.step)
        data["grads"] = {k: round(v, 8) for k, v in self.norms.by_point(norms).items()}
        data["status"] = (
            f"training: step {trainer.step}/{trainer.total_steps} · epoch {trainer.epoch}"
            f"/{trainer.epochs} · loss {loss:.4f} · {trainer.step / elapsed:.1f} steps/s"
        )
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
            self.norms.sample(self.trainer.step)
            with _LOCK:
                if self in _ACTIVE:
                    _ACTIVE.remove(self)
            self.dispatch(self.on_done, self)
