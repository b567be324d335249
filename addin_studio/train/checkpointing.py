"""Saving the trained part of a model: an Attachment's add-ins, or the trainable parameters."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.files import atomic_write


def save_adapters(attachment: Any, path: str | Path) -> Path:
    """Save an Attachment's add-in weights (config string in the metadata) to ``path``.

    Uses ``attachment.save`` (adapter-only safetensors the core can re-load with ``studio.load``);
    while that is not available, writes ``attachment.addins.state_dict()`` with safetensors and the
    canonical config string under the metadata key ``"config"``; base parameters kept trainable by the
    config (e.g. a new head) are stored too, under ``"base.<parameter name>"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save = getattr(attachment, "save", None)
    if callable(save):
        try:
            save(str(path))
            return path
        except (NotImplementedError, ImportError):  # the core's checkpoint module is not there yet
            pass
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in attachment.addins.state_dict().items()}
    addin_params = {id(p) for p in attachment.addins.parameters()}
    model = getattr(attachment, "model", None)
    if model is not None:
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in addin_params:
                tensors[f"base.{name}"] = p.detach().cpu().contiguous()
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={
        "config": str(attachment.config), "format": "addins-state-dict"}))
    return path


def save_trainable(model: nn.Module, path: str | Path) -> Path:
    """Save the parameters that require grad (safetensors), e.g. when no Attachment is involved."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    tensors = {}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            tensors[name] = p.detach().cpu().contiguous()
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "trainable-parameters"}))
    return path
