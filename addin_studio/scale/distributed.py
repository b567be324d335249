"""Data-parallel training with PyTorch's own machinery (``torchrun`` + ``torch.distributed`` + DDP).

Nothing here is home-made distribution: these are thin helpers around
:class:`~torch.nn.parallel.DistributedDataParallel` and
:class:`~torch.utils.data.distributed.DistributedSampler` that know about attached models:

- :func:`init_distributed` joins the process group ``torchrun`` describes in the environment;
- :func:`wrap_model` wraps the attached model in DDP. DDP all-reduces the gradients of parameters with
  ``requires_grad=True`` only, so a frozen backbone costs no communication: only the add-ins (and what
  the config keeps trainable) are synchronized;
- :func:`distributed_loader` re-creates a ``DataLoader`` with a ``DistributedSampler`` (each rank sees
  its own shard) and :class:`SamplerEpoch` reshuffles it every epoch;
- :func:`is_main_process` / :func:`rank_zero_only` keep progress bars, checkpoints and plots on rank 0.

See docs/scaling.md.
"""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main_process",
    "launched_by_torchrun",
    "init_distributed",
    "cleanup",
    "device_for_rank",
    "wrap_model",
    "unwrap_model",
    "distributed_loader",
    "SamplerEpoch",
    "all_reduce_mean",
    "barrier",
    "rank_zero_only",
]

F = TypeVar("F", bound=Callable[..., Any])


# -- where am I --------------------------------------------------------------------------------------
def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialized (e.g. under ``torchrun``)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK`` set by ``torchrun``; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0, and always when not distributed: the process that prints, plots and saves."""
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    """Whether the environment describes a process group (``RANK`` and ``WORLD_SIZE``, as torchrun sets)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


# -- set-up and tear-down ----------------------------------------------------------------------------
def init_distributed(backend: str | None = None, timeout_s: float = 600.0) -> bool:
    """Join the process group described by the environment (``torchrun`` sets it); return whether
    this process is now distributed.

    Does nothing (and returns ``False``) when the environment has no ``RANK``/``WORLD_SIZE``, and
    nothing (returns ``True``) when a group already exists. ``backend`` defaults to ``"nccl"`` when
    CUDA is available and ``"gloo"`` otherwise. On CUDA it also selects the device ``LOCAL_RANK``.
    """
    if is_distributed():
        return True
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def cleanup() -> None:
    """Leave the process group if one is initialized (call at the end of a torchrun script)."""
    if is_distributed():
        dist.destroy_process_group()


def device_for_rank() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", get_local_rank())
    return torch.device("cpu")


# -- the model ---------------------------------------------------------------------------------------
def _needs_find_unused(model: nn.Module, attachment: Any) -> bool:
    """Whether some trainable parameter may get no gradient in a forward pass.

    That happens when an add-in is merged (its hook is off) or sits at a module the traced forward
    pass never called; DDP then needs ``find_unused_parameters=True`` or it waits forever for them.
    """
    if attachment is None:
        return False
    if getattr(attachment, "merged", False):
        return True
    graph = getattr(attachment, "graph", None)
    if graph is None:
        return True
    for _, placement, _ in attachment.entries:
        for point in (placement.source, placement.target):
            if point.module in graph and graph[point.module].order is None:
                return True
    return False


def wrap_model(
    model: nn.Module,
    *,
    attachment: Any = None,
    device: torch.device | str | None = None,
    find_unused_parameters: bool | None = None,
    **ddp_kwargs: Any,
) -> DistributedDataParallel:
    """Wrap an (attached) model in :class:`DistributedDataParallel`.

    Only parameters with ``requires_grad=True`` — the add-ins and what the config keeps trainable —
    have their gradients all-reduced; frozen base weights are never communicated after DDP's one-time
    broadcast from rank 0 at construction (which also makes every rank start from identical weights).
    ``find_unused_parameters`` defaults to what the ``attachment`` needs (see :func:`_needs_find_unused`).
    The model is moved to ``device`` (default :func:`device_for_rank`) first. Extra keyword arguments
    go to DDP. Raises ``RuntimeError`` when no process group is initialized and ``ValueError`` when the
    model has nothing to train.
    """
    if isinstance(model, DistributedDataParallel):
        return model
    if not is_distributed():
        raise RuntimeError(
            "wrap_model() needs an initialized process group: launch with torchrun and call "
            "addin_studio.scale.distributed.init_distributed() first"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "the model has no parameters with requires_grad=True: DDP has nothing to "
            "synchronize (did you attach any add-in?)"
        )
    device = torch.device(device) if device is not None else device_for_rank()
    model = model.to(device)
    if find_unused_parameters is None:
        find_unused_parameters = _needs_find_unused(model, attachment)
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters, **ddp_kwargs
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP (or ``torch.compile``) wrapper; the model itself otherwise."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


# -- the data ----------------------------------------------------------------------------------------
def distributed_loader(
    loader: DataLoader,
    *,
    shuffle: bool | None = None,
    seed: int = 0,
    drop_last: bool = False,
    batch_size: int | None = None,
) -> DataLoader:
    """A copy of ``loader`` whose sampler is a :class:`DistributedSampler` (one shard per rank).

    ``shuffle`` defaults to whether ``loader`` shuffles. ``batch_size`` (per rank) defaults to the
    loader's: the global batch is then ``world_size`` times larger; pass ``batch_size=B // world_size``
    to keep the global batch ``B``. Returns ``loader`` unchanged when not distributed or when it
    already uses a ``DistributedSampler``. Each rank takes every ``world_size``-th sample
    (``rank, rank + world_size, ...``); when the dataset size is not a multiple of ``world_size`` the
    sampler repeats a few samples (``drop_last=False``) or drops them (``drop_last=True``).
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(f"distributed_loader() expects a torch DataLoader, got {type(loader).__name__}")
    if not is_distributed() or isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_size is None:
        raise ValueError("distributed_loader() needs a DataLoader with a batch_size (not a batch_sampler)")
    if shuffle is None:
        shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=get_world_size(),
        rank=get_rank(),
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=batch_size or loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False,
    )


class SamplerEpoch:
    """Trainer callback: calls ``sampler.set_epoch(epoch - 1)`` on each loader's ``DistributedSampler``
    before every epoch, so that shuffling differs between epochs (and agrees between ranks)."""

    def __init__(self, *loaders: Any) -> None:
        self.loaders = loaders

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        for loader in self.loaders:
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch - 1)


# -- collectives and rank-0 helpers ------------------------------------------------------------------
def all_reduce_mean(value: float | torch.Tensor, weight: float = 1.0) -> float:
    """The ``weight``-weighted mean of a number over all ranks (the number itself when not distributed).

    E.g. ``all_reduce_mean(mean_loss, weight=num_samples)`` gives the mean loss over the whole data set.
    """
    value = float(value)
    if not is_distributed():
        return value
    device = device_for_rank() if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value * weight, weight], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0] / t[1])


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def rank_zero_only(fn: F) -> F:
    """Decorator: run ``fn`` on rank 0 only (other ranks get ``None``), e.g. for saving or plotting."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if is_main_process():
            return fn(*args, **kwargs)
        return None

    return wrapper  # type: ignore[return-value]
