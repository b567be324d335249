"""Reading and writing safetensors files (no pickle anywhere)."""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path
from typing import Callable, Mapping

import torch


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy: what safetensors writes."""
    return t.detach().to("cpu").contiguous().clone()


def write(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (copied to CPU) with string ``metadata``; creates the parent folder.

    Atomic: the file is written beside the target and renamed over it, so a reader never sees half a
    file and an interrupted save leaves the old file (and no temporary one) behind."""
    from safetensors.torch import save_file

    data = {k: cpu_copy(t) for k, t in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(data, str(tmp), metadata=dict(metadata)))


_TMP = ".{name}.tmp-{pid}"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path`` and rename it over ``path``.

    The temporary file is removed on any error or interrupt (``KeyboardInterrupt`` included); one left
    by a process that was killed outright is removed by the next save to the same path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = path.with_name(_TMP.format(name=path.name, pid=os.getpid()))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _remove_stale(path: Path) -> None:
    prefix = f".{path.name}.tmp-"
    for old in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = old.name[len(prefix) :]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            with contextlib.suppress(OSError):
                old.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours (PermissionError), or not checkable: keep its file
        return True
    return True


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
        raise ValueError(
            f"{path} is not a readable safetensors file (corrupted or truncated?): {exc}"
        ) from None
    return tensors, meta
