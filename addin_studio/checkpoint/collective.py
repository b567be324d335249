"""Writing checkpoints from a data-parallel run (torchrun + DDP or FSDP2): whole tensors, one writer.

Every writer of this package (``att.save``, ``att.export_peft``, the Trainer's checkpoints) collects the
tensors it writes, passes them through :func:`full_tensors` and writes inside :func:`one_writer`:

- one process, or a process group of one: nothing changes, the calling process writes;
- a process group whose model is **not sharded** (DDP, or before ``fully_shard``): every rank already
  holds the whole tensors, so no rank waits for another; **rank 0 writes**, other ranks write nothing
  and return at once. Calling it on rank 0 alone (``if is_main_process(): att.save(...)``) works, and
  so does calling it on every rank (the file is written once);
- an **FSDP2-sharded** model (DTensor parameters): each tensor is all-gathered with
  ``DTensor.full_tensor()``, a collective, so **every rank must make the call**; rank 0 writes, then
  tells every rank how the write went (a broadcast that doubles as the barrier): when the call
  returns the file exists, on every rank; when rank 0 could not write, every rank raises.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from ..engine.attachment import _is_sharded
from .files import cpu_copy

__all__ = ["full_tensors", "one_writer", "writes_here"]


def _group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def writes_here() -> bool:
    """Whether this process writes checkpoint files: rank 0 of a process group, or the only process."""
    return _rank() == 0


def full_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole, detached, contiguous CPU copies of ``tensors``, in their order.

    A DTensor (an FSDP2 shard, or anything else a device mesh splits) is all-gathered with
    ``full_tensor()`` first: a collective, so every rank must call this with the same names in the same
    order (each rank of a sharded model collects them the same way). Plain tensors are only copied.
    """
    if not any(_is_dtensor(t) for t in tensors.values()):
        return {name: cpu_copy(t) for name, t in tensors.items()}
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if _is_dtensor(t):
            t = t.detach().full_tensor()
        out[name] = cpu_copy(t)
    return out


def _is_dtensor(t: torch.Tensor) -> bool:
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


@contextlib.contextmanager
def one_writer(model: nn.Module, target: object) -> Iterator[bool]:
    """Yields whether this rank writes ``target`` (see the module's docstring); write only when it does.

    For an FSDP2-sharded ``model`` — every rank is in the call — rank 0 broadcasts the outcome of its
    write on exit, so no rank returns before the file exists and an error on rank 0 is raised on every
    rank (as a RuntimeError naming rank 0's error) instead of leaving the others waiting.
    """
    if _group_size() == 1:
        yield True
        return
    if not _is_sharded(model):
        yield writes_here()
        return
    error: BaseException | None = None
    try:
        yield writes_here()
    except BaseException as exc:  # noqa: BLE001 — told to every rank below, then raised again
        error = exc
    outcome = [None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(outcome, src=0)
    if error is not None:
        raise error
    if outcome[0] is not None:
        raise RuntimeError(f"rank 0 could not write {target}: {outcome[0]}")
