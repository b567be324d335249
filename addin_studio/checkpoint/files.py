"""Reading and writing safetensors files (no pickle anywhere)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy: what safetensors writes."""
    return t.detach().to("cpu").contiguous().clone()


def write(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (copied to CPU) with string ``metadata``; creates the parent folder."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: cpu_copy(t) for k, t in tensors.items()}, str(path), metadata=dict(metadata))


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; ValueError for a damaged one."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file (corrupted or truncated?): "
                         f"{exc}") from None
    return tensors, meta
