"""Trainer callbacks: the base class, a function adapter and the tqdm progress bars.

A callback is any object with some of the methods of :class:`Callback`; missing ones are skipped.
They all run on the thread that called ``Trainer.fit()``. See docs/training.md.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch


class Callback:
    """Base class with no-op hooks; subclass and override those you need."""

    def on_fit_start(self, trainer: Any) -> None:
        """Before the first step (after the optimizer and scheduler exist)."""

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Before the first step of ``epoch`` (1-based)."""

    def on_step(self, trainer: Any, step: int, logs: dict) -> None:
        """After optimizer step ``step`` (1-based, counted over the whole fit)."""

    def on_epoch(self, trainer: Any, epoch: int, logs: dict) -> None:
        """After epoch ``epoch`` (1-based) and its validation."""

    def on_end(self, trainer: Any, history: dict) -> None:
        """Once when ``fit()`` ends: finished, stopped, or failed (then ``trainer.error`` is set)."""


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_step=lambda tr, step, logs: ...)``."""

    def __init__(
        self,
        on_fit_start: Callable | None = None,
        on_epoch_start: Callable | None = None,
        on_step: Callable | None = None,
        on_epoch: Callable | None = None,
        on_end: Callable | None = None,
    ) -> None:
        for name, fn in (
            ("on_fit_start", on_fit_start),
            ("on_epoch_start", on_epoch_start),
            ("on_step", on_step),
            ("on_epoch", on_epoch),
            ("on_end", on_end),
        ):
            if fn is not None:
                if not callable(fn):
                    raise TypeError(f"LambdaCallback {name} must be callable, got {type(fn).__name__}")
                setattr(self, name, fn)


def memory_in_use(device: torch.device) -> str:
    """Peak memory as text: CUDA memory reserved on a GPU, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_reserved(device) / 2**30:.2f}G"
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return f"{peak * scale / 2**30:.2f}G"
    except (ImportError, OSError):  # Windows has no resource module
        return "-"


class ProgressBar(Callback):
    """tqdm.auto bars (a widget in Jupyter, text in a terminal): one per epoch.

    The postfix shows Mem / Loss / LR (tqdm itself shows the elapsed time); after validation the bar
    also shows Acc@1 / Acc@5, like ZhiJian's trainer.
    """

    def __init__(self, file: Any = None, leave: bool = True) -> None:
        self.file = file
        self.leave = leave
        self._bar = None

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        from tqdm.auto import tqdm

        self._close()
        self._bar = tqdm(
            total=trainer.steps_in_epoch(epoch),
            desc=f"Epoch {epoch}/{trainer.epochs}",
            file=self.file,
            leave=self.leave,
            dynamic_ncols=True,
            unit="step",
        )

    def on_step(self, trainer: Any, step: int, logs: dict) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        self._bar.set_postfix(
            mem=memory_in_use(trainer.device),
            loss=f"{logs['loss']:.4f}",
            lr=f"{logs['lr']:.2e}",
            refresh=False,
        )

    def on_epoch(self, trainer: Any, epoch: int, logs: dict) -> None:
        if self._bar is None:
            return
        post = {"mem": memory_in_use(trainer.device), "loss": f"{logs['train_loss']:.4f}"}
        if "val_acc1" in logs:
            post["acc@1"] = f"{logs['val_acc1']:.2f}"
            post["acc@5"] = f"{logs['val_acc5']:.2f}"
        self._bar.set_postfix(post, refresh=True)
        self._close()

    def on_end(self, trainer: Any, history: dict) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
