"""The Trainer: fit / test a classifier (a model with add-ins, or any nn.Module)."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..scale import distributed as dist_utils
from ..checkpoint.collective import writes_here
from ..inputs import call_model, to_device

from .callbacks import ProgressBar
from .checkpointing import save_trainable
from .metrics import AverageMeter, topk_correct
from .optim import build_optimizer, build_scheduler, trainable_parameters

HOOKS = ("on_fit_start", "on_epoch_start", "on_step", "on_epoch", "on_end")

# Models being trained right now, by any Trainer in this process: a second train intent is refused,
# whichever thread it comes from (the check and the claim happen under one lock).
_TRAINING: "weakref.WeakKeyDictionary[nn.Module, Any]" = weakref.WeakKeyDictionary()
_TRAINING_LOCK = threading.Lock()


@contextlib.contextmanager
def _interrupts_held():
    """Hold back Ctrl-C (SIGINT) for a few statements; it is raised right after. Main thread only
    (other threads never receive signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except ValueError:  # not in the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            if callable(previous):
                previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


def _logits(output: Any) -> torch.Tensor:
    """The logits of a model output: a tensor, ``.logits`` (Hugging Face), ``["logits"]`` or item 0."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; "
        "return a tensor, a tuple whose first item is the logits, or an object with .logits"
    )


def _own_loss(output: Any, batch: Mapping) -> torch.Tensor:
    """The loss a model computed itself: ``.loss`` (Hugging Face) or ``["loss"]``."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"a dict batch (keys: {', '.join(map(str, batch))}) is passed to the model as "
            f"keyword inputs and the model must return its own loss, but its "
            f"{type(output).__name__} output has none; a Hugging Face model computes it when "
            f"the batch carries 'labels'"
        )
    return loss


def _batch_size(batch: Any) -> int:
    """The number of examples in a batch: targets' first dimension, or a dict batch's first tensor's."""
    items = list(batch.values()) if isinstance(batch, Mapping) else [batch[1]]
    for item in items:
        if hasattr(item, "shape") and len(item.shape):
            return int(item.shape[0])
    return 1


def _resolve_amp(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    if amp in (None, False, "none", "off", "fp32"):
        return None
    if amp is True:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if amp not in names:
        raise ValueError(f"unknown amp {amp!r}; use False, True, 'bf16' or 'fp16'")
    dtype = names[amp]
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"amp is supported on cpu and cuda devices, not {device.type!r}")
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("amp='fp16' needs a CUDA device; on the CPU use amp='bf16'")
    return dtype


class Trainer:
    """Train and evaluate a classifier; only parameters with ``requires_grad`` are optimized.

    Batches are ``(inputs, targets)``: ``inputs`` a tensor (or a tuple of positional inputs, or a dict
    of keyword inputs), ``targets`` class indices. A batch that is a dict is the keyword inputs of a
    model that computes its own loss (a Hugging Face causal LM given ``labels``): the loss is
    ``model(**batch).loss``, ``loss_fn`` is not used, and validation gives ``val_loss`` only (the best
    epoch has the lowest). ``fit()`` returns the history; ``test()`` the accuracies. ``stop()``
    (thread-safe) ends ``fit()`` after the current step.

    Args:
        model: The model to train (moved to ``device``).
        train_loader: The training batches.
        val_loader: Validation batches, evaluated after every epoch (and picking the best epoch).
        epochs: The number of epochs (an integer >= 1).
        lr: The base learning rate (> 0).
        optimizer: A name (``adam``, ``adamw``, ``sgd``), an optimizer instance, or
            ``callable(params)``.
        scheduler: A per-step schedule: a name (``cosine``, ``step``, ``constant``; ``None`` =
            constant), an ``LRScheduler`` instance, or ``callable(optimizer)``. Named ones restart from
            the base lr.
        callbacks: Objects with any of the methods ``on_fit_start(trainer)``,
            ``on_epoch_start(trainer, epoch)``, ``on_step(trainer, step, logs)``,
            ``on_epoch(trainer, epoch, logs)`` and ``on_end(trainer, history)``; see docs/training.md.
        weight_decay: ``None`` means the usual default: 0.01 for AdamW, 0 for Adam and SGD.
        momentum: The SGD momentum.
        warmup_steps: Steps of linear warm-up, ``(step + 1) / warmup_steps`` of the lr, whatever the
            schedule.
        step_size: For the ``step`` schedule: steps between decays (default ``max(1, T // 3)`` of the
            ``T`` steps after warm-up).
        gamma: For the ``step`` schedule: the factor of each decay.
        grad_clip: The gradient norm to clip to (> 0), or ``None``.
        amp: Mixed precision: ``False``, ``True`` (bf16, or fp16 on a GPU without bf16), ``"bf16"`` or
            ``"fp16"``.
        device: Where to train; default: CUDA if available, else CPU (under torchrun, the rank's GPU).
        seed: Seeds ``random``, NumPy and ``torch`` at the start of each ``fit()``.
        loss_fn: ``loss_fn(logits, targets)``; default ``nn.CrossEntropyLoss()``.
        max_steps: Stop after this many optimizer steps; required when ``train_loader`` has no
            ``len()``.
        attachment: The :class:`Attachment` whose add-ins are trained. With a ``checkpoint_dir``, the
            add-ins of the best epoch (highest validation Acc@1, or lowest training loss without a
            ``val_loader``) are saved to ``checkpoint_dir/best.safetensors`` with ``attachment.save``;
            without an attachment, the trainable parameters are saved there.
        checkpoint_dir: The folder for the best epoch's checkpoint, or ``None`` for none.
        progress: Whether to show a progress bar.
        strategy: Under torchrun the model is wrapped in DDP (``"ddp"``) or sharded with FSDP2
            (``"fsdp"``, see :mod:`addin_studio.scale.fsdp`); in one process ``strategy`` changes nothing.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or a callback has none of the hook methods.
        ValueError: A setting is out of range (naming it), ``train_loader`` is empty or has no
            ``len()`` without ``max_steps``, or the model has no trainable parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable,
        val_loader: Iterable | None = None,
        epochs: int = 1,
        lr: float = 1e-3,
        optimizer: Any = "adamw",
        scheduler: Any = "cosine",
        callbacks: Sequence[Any] = (),
        *,
        weight_decay: float | None = None,
        momentum: float = 0.9,
        warmup_steps: int = 0,
        step_size: int | None = None,
        gamma: float = 0.1,
        grad_clip: float | None = None,
        amp: bool | str = False,
        device: str | torch.device | None = None,
        seed: int | None = None,
        loss_fn: Callable | None = None,
        max_steps: int | None = None,
        attachment: Any = None,
        checkpoint_dir: str | Path | None = None,
        progress: bool = True,
        strategy: str = "ddp",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps must be an integer >= 1 or None, got {max_steps!r}")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        for cb in callbacks:
            if not any(callable(getattr(cb, h, None)) for h in HOOKS):
                raise TypeError(f"callback {cb!r} has none of the methods {', '.join(HOOKS)}")

        if strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy must be 'ddp' or 'fsdp' (used under torchrun), got {strategy!r}")
        # Under torchrun (a process group is initialized): DDP (or FSDP2) over the model, a
        # DistributedSampler per rank, progress bars and checkpoints on rank 0 only. See docs/scaling.md.
        self.distributed = dist_utils.is_distributed()
        self.strategy = strategy
        self._sharded = self.distributed and strategy == "fsdp"
        if self._sharded and checkpoint_dir is not None and attachment is None:
            raise ValueError(
                "strategy='fsdp' writes adapter-only checkpoints: pass attachment= with checkpoint_dir="
            )
        if device is None and self.distributed:
            device = dist_utils.device_for_rank()
        self.device = (
            torch.device(device)
            if device is not None
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self._own_model = model  # before any DDP wrapper: the key of the training lock
        self.model = model.to(self.device)
        if self._sharded:
            from ..scale import fsdp

            self.model = fsdp.shard_model(self.model, attachment=attachment, device=self.device)
        elif self.distributed:
            self.model = dist_utils.wrap_model(self.model, attachment=attachment, device=self.device)
        if self.distributed:
            train_loader = (
                dist_utils.distributed_loader(train_loader, seed=seed or 0)
                if isinstance(train_loader, DataLoader)
                else train_loader
            )
            progress = progress and dist_utils.is_main_process()
            if not self._sharded:  # FSDP gathers the add-ins on every rank; rank 0 writes
                checkpoint_dir = checkpoint_dir if dist_utils.is_main_process() else None
        if attachment is not None and getattr(attachment, "addins", None) is not None:
            attachment.addins.to(self.device)  # normally a child of the model already; harmless then
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.epochs = epochs
        self.lr = lr
        self.max_steps = max_steps
        self.grad_clip = grad_clip
        self.warmup_steps = warmup_steps
        self.amp_dtype = _resolve_amp(amp, self.device)
        self.seed = seed
        self.loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        self.attachment = attachment
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.callbacks = list(callbacks) + ([ProgressBar()] if progress else [])
        if isinstance(getattr(train_loader, "sampler", None), DistributedSampler):
            self.callbacks.append(dist_utils.SamplerEpoch(train_loader))  # reshuffle every epoch

        self._steps_per_epoch = self._loader_len(train_loader)
        if self._steps_per_epoch == 0:
            raise ValueError("train_loader is empty: it yields no batches")
        if self._steps_per_epoch is None and max_steps is None:
            raise ValueError("train_loader has no len(); pass max_steps= so the schedule knows its length")
        self.params = trainable_parameters(self.model)
        if not self.params and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                "the model has no parameters with requires_grad=True: nothing to train "
                "(did the config keep anything trainable, or add any add-in?)"
            )
        self.optimizer = build_optimizer(optimizer, self.params, lr, weight_decay, momentum)
        self._scheduler_spec = scheduler
        self._step_size = step_size
        self._gamma = gamma
        self.scheduler = None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        self._stop = threading.Event()
        self.history: dict[str, list] = {}
        self.step = 0
        self.epoch = 0
        self.stopped = False
        self.fitting = False
        self.error: BaseException | None = None
        # (epoch, metric, file) of the best epoch: one tuple, replaced in one assignment after its file
        # is on disk, so the record and the file never disagree (Ctrl-C included)
        self._best: tuple[int | None, float | None, Path | None] = (None, None, None)

    @property
    def best_epoch(self) -> int | None:
        """The best epoch so far (1-based), or None."""
        return self._best[0]

    @property
    def best_metric(self) -> float | None:
        """Its metric: validation Acc@1, else minus the validation loss (dict batches), else minus the
        training loss (no val_loader)."""
        return self._best[1]

    @property
    def best_checkpoint(self) -> Path | None:
        """The file holding the best epoch's weights (with a ``checkpoint_dir``), or None."""
        return self._best[2]

    # ----------------------------------------------------------------- sizes
    @staticmethod
    def _loader_len(loader: Iterable) -> int | None:
        try:
            return len(loader)  # type: ignore[arg-type]
        except TypeError:
            return None

    @property
    def total_steps(self) -> int:
        """Optimizer steps one ``fit()`` makes unless stopped."""
        if self._steps_per_epoch is None:
            return int(self.max_steps)  # checked in __init__
        total = self.epochs * self._steps_per_epoch
        return min(total, self.max_steps) if self.max_steps is not None else total

    def steps_in_epoch(self, epoch: int) -> int | None:
        """Steps epoch ``epoch`` makes unless stopped.

        Args:
            epoch: The epoch, 1-based.

        Returns:
            The number of steps, or ``None`` when the loader has no ``len()``.
        """
        if self._steps_per_epoch is None:
            return None
        done = (epoch - 1) * self._steps_per_epoch
        return max(0, min(self._steps_per_epoch, self.total_steps - done))

    # ----------------------------------------------------------------- control
    def stop(self) -> None:
        """Ask ``fit()`` to end after the current step (safe to call from any thread).

        A request made while no fit is running applies to the next ``fit()``, which then makes no step.
        """
        self._stop.set()

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if callable(fn):
                fn(self, *args)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _forward(self, batch: Any) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(logits, float32 loss, targets) of one batch, on the trainer's device.

        A dict batch is the model's keyword inputs and the model computes its own loss (a Hugging Face
        model given ``labels``): the loss is ``model(**batch).loss`` and there are no class targets.
        """
        if isinstance(batch, Mapping):
            with self._autocast():
                output = call_model(self.model, dict(batch), self.device, non_blocking=True)
            return None, _own_loss(output, batch).float(), None
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            length = " of length %d" % len(batch) if isinstance(batch, (tuple, list)) else ""
            raise TypeError(
                "expected batches of (inputs, targets), or a dict of keyword inputs with "
                f"labels for a model that computes its own loss; got {type(batch).__name__}"
                f"{length}"
            )
        inputs, targets = batch
        if isinstance(inputs, list):  # a DataLoader collates a tuple of inputs into a list
            inputs = tuple(inputs)
        targets = to_device(targets, self.device, non_blocking=True)
        with self._autocast():
            logits = _logits(call_model(self.model, inputs, self.device, non_blocking=True))
            loss = self.loss_fn(logits, targets)
        return logits, loss.float(), targets

    # ----------------------------------------------------------------- training
    def _buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every buffer of the model with a copy (BatchNorm statistics move in the forward pass)."""
        seen: set[int] = set()
        out = []
        for b in self.model.buffers():
            if id(b) not in seen:
                seen.add(id(b))
                out.append((b, b.detach().clone()))
        return out

    def _train_step(self, batch: Any, epoch: int, index: int) -> dict:
        buffers = self._buffers()
        try:
            return self._step_once(batch, epoch, index)
        except Exception:
            with torch.no_grad():  # a failed step (a non-finite batch) leaves no trace in the buffers
                for b, saved in buffers:
                    b.copy_(saved)
            raise

    def _step_once(self, batch: Any, epoch: int, index: int) -> dict:
        step = self.step + 1
        self.optimizer.zero_grad(set_to_none=True)
        _, loss, _ = self._forward(batch)
        value = float(loss.detach())
        where = f"step {step} (epoch {epoch}, batch {index})"
        if not math.isfinite(value):
            raise FloatingPointError(
                f"non-finite loss ({value}) at {where}; the parameters are left as "
                "they were before this step (try a lower lr, grad_clip, or amp=False)"
            )
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        # The total grad norm doubles as a check: inf/nan grads would corrupt the parameters.
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip or float("inf"))
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP
        if self.scaler is not None:  # fp16: the scaler skips steps with inf grads and lowers its scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if not math.isfinite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                raise FloatingPointError(
                    f"non-finite gradient norm ({norm}) at {where}; the parameters are "
                    "left as they were before this step"
                )
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step = step
        return {"loss": value, "lr": lr, "grad_norm": norm, "epoch": epoch, "batch": index, "step": step}

    def fit(self) -> dict[str, list]:
        """Train for ``epochs`` (or ``max_steps``); return the history.

        Each call restarts the history, step count and named schedule; model and optimizer state carry
        over.

        Returns:
            The history: ``loss``, ``lr`` (per step: the lr used for that step), ``train_loss``,
            ``epoch_time`` (per epoch) and, with a ``val_loader``, ``val_loss``, ``val_acc1``,
            ``val_acc5`` (per epoch, %).

        Raises:
            RuntimeError: ``fit()`` is already running, or another Trainer is training the same model.
        """
        with _TRAINING_LOCK:
            if self.fitting:
                raise RuntimeError("fit() is already running")
            if self._own_model in _TRAINING:
                raise RuntimeError(
                    "this model is already being trained (another Trainer's fit() is running); stop it first"
                )
            _TRAINING[self._own_model] = self
            self.fitting = True
        self.stopped = False
        self.error = None
        self.step = 0
        self.epoch = 0
        self._best = (None, None, None)
        self.history = history = {"loss": [], "lr": [], "train_loss": [], "epoch_time": []}
        if self.val_loader is not None:
            history.update(val_loss=[], val_acc1=[], val_acc5=[])
        if self.seed is not None:
            random.seed(self.seed)
            torch.manual_seed(self.seed)
            with contextlib.suppress(ImportError):
                import numpy as np

                np.random.seed(self.seed)
        self.scheduler = build_scheduler(
            self._scheduler_spec,
            self.optimizer,
            self.total_steps,
            self.warmup_steps,
            self._step_size,
            self._gamma,
        )
        self.start_time = time.perf_counter()
        try:
            self._emit("on_fit_start")
            self._run_epochs(history)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            with _TRAINING_LOCK:
                _TRAINING.pop(self._own_model, None)
                self.fitting = False
            self._stop.clear()
            self._end(history)
        return history

    def _end(self, history: dict[str, list]) -> None:
        """Every callback's ``on_end`` runs; the first error wins: a callback's error never replaces
        the error that ended training (it is added to it as a note), and without one the first
        callback error is raised after all callbacks ran."""
        first: BaseException | None = None
        for cb in self.callbacks:
            fn = getattr(cb, "on_end", None)
            if callable(fn):
                try:
                    fn(self, history)
                except Exception as exc:  # noqa: BLE001 - collected, see above
                    first = first or exc
        if first is None:
            return
        if self.error is not None:
            self.error.add_note(f"a callback's on_end also failed: {type(first).__name__}: {first}")
            return
        self.error = first
        raise first

    def _run_epochs(self, history: dict[str, list]) -> None:
        for epoch in range(1, self.epochs + 1):
            if self.step >= self.total_steps or self._stop.is_set():
                self.stopped = self._stop.is_set()
                return
            self.epoch = epoch
            self._emit("on_epoch_start", epoch)
            self.model.train()
            meter = AverageMeter()
            t0 = time.perf_counter()
            for index, batch in enumerate(self.train_loader):
                if self._stop.is_set():
                    self.stopped = True
                    return  # a partial epoch gets no validation and no on_epoch
                if self.step >= self.total_steps:
                    break
                logs = self._train_step(batch, epoch, index)
                meter.update(logs["loss"], _batch_size(batch))
                history["loss"].append(logs["loss"])
                history["lr"].append(logs["lr"])
                logs["time"] = time.perf_counter() - self.start_time
                self._emit("on_step", self.step, logs)
            train_loss = dist_utils.all_reduce_mean(meter.avg, meter.count) if self.distributed else meter.avg
            epoch_logs: dict[str, Any] = {"epoch": epoch, "step": self.step, "train_loss": train_loss}
            history["train_loss"].append(train_loss)
            if self.val_loader is not None:
                res = self.evaluate(self.val_loader)
                for k in ("loss", "acc1", "acc5"):
                    if k in res:  # a model computing its own loss has no accuracy
                        history[f"val_{k}"].append(res[k])
                        epoch_logs[f"val_{k}"] = res[k]
            epoch_logs["time"] = time.perf_counter() - t0
            history["epoch_time"].append(epoch_logs["time"])
            epoch_logs["best"] = self._track_best(epoch, epoch_logs)
            self._emit("on_epoch", epoch, epoch_logs)

    def _track_best(self, epoch: int, logs: dict) -> bool:
        metric = (
            logs["val_acc1"]
            if "val_acc1" in logs
            else -logs["val_loss"]
            if "val_loss" in logs
            else -logs["train_loss"]
        )
        if not math.isfinite(metric) or (self.best_metric is not None and metric <= self.best_metric):
            return False
        if self.checkpoint_dir is None:
            self._best = (epoch, metric, None)
            return True
        # the file is staged beside its place; renaming it there and recording the epoch happen
        # together, with Ctrl-C held back, so the record and the file never disagree
        path = self.checkpoint_dir / "best.safetensors"
        staged = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            if self.attachment is not None:  # FSDP: every rank gathers the add-ins; rank 0 writes
                self.attachment.save(staged)
                written = writes_here()
            else:
                save_trainable(self.model, staged)
                written = True
            with _interrupts_held():
                if written:
                    os.replace(staged, path)
                self._best = (epoch, metric, path if written else None)
        except BaseException:
            with contextlib.suppress(OSError):
                staged.unlink()
            raise
        return True

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, loader: Iterable) -> dict[str, float]:
        """Top-1 / top-5 accuracy (%) and mean loss over ``loader``; the model's mode is restored.

        Dict batches (a model computing its own loss) give the mean loss alone: ``{"loss": ...}``.

        Args:
            loader: The batches to evaluate on.

        Returns:
            ``{"acc1": %, "acc5": %, "loss": float}``, or ``{"loss": float}`` for dict batches.
        """
        was_training = self.model.training
        self.model.eval()
        correct1 = correct5 = n = 0
        loss_sum = 0.0
        own_loss = False
        try:
            for batch in loader:
                logits, loss, targets = self._forward(batch)
                if logits is None or targets is None:
                    own_loss, b = True, _batch_size(batch)
                else:
                    c1, c5 = topk_correct(logits.float(), targets, (1, 5))
                    b = int(targets.shape[0])
                    correct1, correct5 = correct1 + c1, correct5 + c5
                n += b
                loss_sum += float(loss) * b
        finally:
            self.model.train(was_training)
        if n == 0:
            raise ValueError("the evaluation loader is empty: it yields no batches")
        if own_loss:
            return {"loss": loss_sum / n}
        return {"acc1": 100.0 * correct1 / n, "acc5": 100.0 * correct5 / n, "loss": loss_sum / n}

    def test(self, loader: Iterable | None = None) -> dict[str, float]:
        """Evaluate the model on ``loader``.

        Args:
            loader: The batches to evaluate; default: the ``val_loader``.

        Returns:
            ``{"acc1": %, "acc5": %, "loss": float}``.

        Raises:
            ValueError: No ``loader`` was passed and the Trainer has no ``val_loader``.
        """
        loader = loader if loader is not None else self.val_loader
        if loader is None:
            raise ValueError("test() needs a loader: pass one, or give the Trainer a val_loader")
        return self.evaluate(loader)
