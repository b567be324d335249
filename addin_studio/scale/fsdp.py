"""Fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``) for attached models.

Nothing home-made: :func:`shard_model` applies PyTorch's ``fully_shard`` after :func:`~addin_studio.attach`
— to every block of the model's repeated-block lists (``blocks.0``, ``encoder.layer.3``, ...), then to
the root. The add-ins are one child module of the model (``model.addins``), so they fall into the root's
group: their parameters are sharded across ranks like every other parameter, all-gathered for the
forward/backward pass and their gradients reduce-scattered; the optimizer updates each rank's shard.

Adapter-only checkpoints need the whole tensors: ``att.save(path)`` (and ``att.export_peft``, and the
Trainer's checkpoints) all-gather the add-ins' (and the kept-trainable base) parameters of a sharded
model themselves — a collective, so call it on every rank — and write the file once, on rank 0; it loads
with ``studio.load`` into a single-process model (:mod:`addin_studio.checkpoint.collective`).
:func:`save_adapters` is ``att.save`` plus a barrier, kept for existing code. See docs/scaling.md.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["repeated_blocks", "shard_model", "is_sharded", "gathered", "save_adapters"]


def repeated_blocks(model: nn.Module) -> list[str]:
    """Paths of the blocks to shard one by one: the children of every outermost ``nn.ModuleList`` /
    ``nn.Sequential`` that holds at least two children of one class with parameters (a ViT's ``blocks``,
    a BERT's ``encoder.layer``, a GPT-2's ``h``). Lists inside a chosen block are left to it."""
    chosen: list[str] = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or module is model:
            continue
        if any(path == c or path.startswith(c + ".") for c in chosen):
            continue
        children = [(n, c) for n, c in module.named_children() if any(True for _ in c.parameters())]
        classes = {type(c) for _, c in children}
        if len(children) >= 2 and len(classes) == 1:
            chosen.extend(f"{path}.{n}" if path else n for n, _ in children)
    return chosen


def is_sharded(model: nn.Module) -> bool:
    """Whether some parameter of ``model`` is a DTensor shard (the model went through ``fully_shard``)."""
    from ..engine.attachment import _is_sharded

    return _is_sharded(model)


def shard_model(
    model: nn.Module,
    *,
    attachment: Any = None,
    blocks: list[str] | None = None,
    device: torch.device | str | None = None,
    **fsdp_kwargs: Any,
) -> nn.Module:
    """Shard an attached model with FSDP2: ``fully_shard`` on each repeated block, then on the root.

    Call it after attaching (the add-ins must already be the model's child to be sharded with it) and
    after ``init_distributed()``. ``blocks`` overrides :func:`repeated_blocks`; ``device`` (default:
    the rank's device) is where the model goes first. Extra keyword arguments go to every
    ``fully_shard`` call (e.g. ``mp_policy``). Returns the model, now an ``FSDPModule``.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from . import distributed as D

    if isinstance(model, FSDPModule):
        return model
    if not D.is_distributed():
        raise RuntimeError(
            "shard_model() needs an initialized process group: launch with torchrun and call "
            "addin_studio.scale.distributed.init_distributed() first"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "the model has no parameters with requires_grad=True: nothing to train "
            "(did you attach any add-in?)"
        )
    if attachment is not None and getattr(attachment, "merged", False):
        raise RuntimeError(
            "unmerge() the attachment before sharding: a merged LoRA lives in the base weights"
        )
    model.to(torch.device(device) if device is not None else D.device_for_rank())
    modules = dict(model.named_modules())
    for path in repeated_blocks(model) if blocks is None else blocks:
        if path not in modules:
            raise ValueError(f"shard_model(): no module '{path}' in {type(model).__name__}")
        fully_shard(modules[path], **fsdp_kwargs)
    fully_shard(model, **fsdp_kwargs)
    return model


def _owned(module: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    return [(m, n, p) for m in module.modules() for n, p in m._parameters.items() if p is not None]


@contextlib.contextmanager
def gathered(attachment: Any) -> Iterator[None]:
    """Inside the block, the add-ins' and the kept-trainable base parameters are whole tensors.

    A collective: every rank must enter it. The sharded parameters come back on exit (values the
    block wrote into the whole tensors are not copied back).
    """
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    for module in attachment.model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()  # e.g. the root stays unsharded after a no_grad forward: back to DTensor shards
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    targets = _owned(attachment.addins) + [
        (m, n, p) for m, n, p in _owned(attachment.model) if p.requires_grad
    ]
    seen: set[int] = set()
    try:
        for module, name, p in targets:
            if not isinstance(p, DTensor) or (id(module), name) in seen:
                continue
            seen.add((id(module), name))  # type: ignore[arg-type]
            module._parameters[name] = nn.Parameter(p.full_tensor().detach(), requires_grad=p.requires_grad)
            swapped.append((module, name, p))
        yield
    finally:
        for module, name, p in swapped:
            module._parameters[name] = p


def save_adapters(attachment: Any, path: str | Path) -> Path | None:
    """``attachment.save(path)`` followed by a barrier: call it on every rank; rank 0 writes (gathering
    the shards of an FSDP2-sharded model), and the file exists on every rank when it returns.

    Returns the path on rank 0 (and in one process), ``None`` on the other ranks."""
    from . import distributed as D

    path = Path(path)
    attachment.save(path)  # rank 0 writes (addin_studio.checkpoint.collective)
    D.barrier()  # a sharded save already waits for rank 0's write; a DDP one does not
    return path if D.is_main_process() else None
