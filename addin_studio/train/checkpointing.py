"""Saving the trained part of a model: an Attachment's add-ins, or the trainable parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .. import checkpoint  # noqa: F401  (registers the writer behind Attachment.save)
from ..checkpoint.collective import full_tensors, one_writer
from ..checkpoint.files import atomic_write
from ..scale.distributed import unwrap_model


def save_adapters(attachment: Any, path: str | Path) -> Path:
    """Alias of ``attachment.save(path)`` that returns ``Path(path)``, kept for existing code: call
    :meth:`Attachment.save` (adapter-only safetensors that ``studio.load`` re-attaches)."""
    attachment.save(path)
    return Path(path)


def save_trainable(model: nn.Module, path: str | Path) -> Path:
    """Save the parameters that require grad (safetensors), e.g. when no Attachment is involved.

    A DDP (or ``torch.compile``) wrapper is looked through, so the names are the model's own. Under
    torchrun rank 0 writes; on an FSDP2-sharded model the shards are gathered, so every rank must call
    it (see :mod:`addin_studio.checkpoint.collective`)."""
    from safetensors.torch import save_file

    path = Path(path)
    model = unwrap_model(model)
    seen: set[int] = set()
    tensors = {}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            tensors[name] = p
    tensors = full_tensors(tensors)  # whole CPU tensors; FSDP2 shards are all-gathered (every rank)
    with one_writer(model, path) as writes:
        if writes:
            atomic_write(
                path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "trainable-parameters"})
            )
    return path
