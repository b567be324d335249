"""Big-model start: build on the ``meta`` device, trace and attach there, then load the real weights.

A model built on ``meta`` has shapes but no storage, so tracing it and attaching a config cost no memory.
:func:`materialize` then gives every base parameter the tensor read from safetensors file(s), one tensor at a
time, read straight into its own memory (no memory map, no empty copy), so peak memory stays near one copy of
the weights, and re-attaches the config: the add-ins are built again by their own factories on the real
layers, exactly as a normal :func:`~addin_studio.attach` builds them (LoRA ``B`` zeros, ``A``
Kaiming-uniform). Add-ins built on ``meta`` have no values to keep, so re-building them is the only correct
initialisation. See docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..engine import Attachment, attach

__all__ = ["init_empty_weights", "materialize"]


@contextlib.contextmanager
def init_empty_weights() -> Iterator[None]:
    """Build modules with their parameters on ``meta`` and their buffers as usual.

    Like ``accelerate.init_empty_weights(include_buffers=False)``: buffers such as position ids or
    rotary frequencies are small, often not stored in weight files (non-persistent), and keep their
    computed values. Use ``with torch.device("meta"):`` instead when every buffer is in the file.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            kwargs = dict(module._parameters[name].__dict__)
            kwargs["requires_grad"] = param.requires_grad
            module._parameters[name] = type(param)(module._parameters[name].to("meta"), **kwargs)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _files(weights: str | Path | Sequence[str | Path]) -> list[Path]:
    files = [Path(weights)] if isinstance(weights, (str, Path)) else [Path(w) for w in weights]
    if not files:
        raise ValueError("materialize() needs at least one safetensors file")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"no weights file at {f}")
    return files


def _meta_tensors(model: nn.Module, skip: str | None) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """Every name of a meta parameter or buffer (tied weights under each of their names), and for
    buffers whether they are persistent (stored in a state dict)."""
    names: dict[str, torch.Tensor] = {}
    persistent: dict[str, bool] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        if skip is not None and (prefix == skip or prefix.startswith(skip + ".")):
            continue
        for n, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None and t.device.type == "meta":
                full = f"{prefix}.{n}" if prefix else n
                names[full] = t
                if n in module._buffers:
                    persistent[full] = n not in module._non_persistent_buffers_set
    return names, persistent


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in the file
    nbytes: int


def _header(path: Path) -> dict[str, _Entry]:
    """The tensors of a safetensors file (its JSON header; the data is not read)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 0 < n <= min(size - 8, 100 * 2**20):
            raise ValueError(f"{path} is not a safetensors file (bad header size)")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise ValueError(f"{path} is not a safetensors file: {exc}") from None
    entries = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: unsupported or malformed entry for '{key}': {info!r}") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0 or 8 + n + end > size:
            raise ValueError(f"{path}: the data of '{key}' does not fit its shape or the file (truncated?)")
        entries[key] = _Entry(path, dtype, shape, 8 + n + begin, nbytes)
    return entries


def _index(files: list[Path]) -> dict[str, _Entry]:
    where: dict[str, _Entry] = {}
    for f in files:
        where.update(_header(f))
    return where


def _read(f: Any, entry: _Entry) -> torch.Tensor:
    """Read one tensor straight into a new CPU tensor: no memory map whose pages would count in the
    resident set next to the copy, no intermediate buffer."""
    t = torch.empty(entry.shape, dtype=entry.dtype)
    if entry.nbytes:
        f.seek(entry.start)
        view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
        got = 0
        while got < entry.nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise ValueError(f"{entry.file} ended early while reading a tensor (truncated?)")
            got += n
    return t


def materialize(
    model: nn.Module,
    attachment: Attachment,
    weights: str | Path | Sequence[str | Path],
    *,
    addins: Mapping[str, Callable] | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> Attachment:
    """Give a ``meta``-built, attached ``model`` its real weights and real add-ins.

    Everything is checked before anything changes: on error the model and attachment are untouched.

    Args:
        model: The model built on the ``meta`` device (or inside ``init_empty_weights()``).
        attachment: The attachment on the meta model. It is detached, and its config attached again
            with its traced graph, so the add-ins are created by their factories on the real layers.
        weights: One safetensors file or a list of shards, keyed by the base model's ``state_dict``
            names. Every base parameter and buffer still on ``meta`` must be found there (one name of a
            tied weight is enough), with the same shape; it takes the file's tensor converted to its
            own dtype, on ``device``.
        addins: The same ``addins=`` as to :func:`attach`, for your own add-in classes.
        device: Where the real weights go.
        strict: With ``True`` a key of the files that names nothing on ``meta`` is an error too.

    Returns:
        The new :class:`Attachment`.

    Raises:
        ValueError: A meta tensor has no tensor in the files or one of another shape, a key names
            nothing on ``meta`` (with ``strict``), a file is damaged, or the attachment belongs to
            another model.
        RuntimeError: The attachment has been detached.
    """
    if not attachment.attached:
        raise RuntimeError("cannot materialize: this attachment has been detached")
    if attachment.model is not model:
        raise ValueError("materialize(): the attachment belongs to another model")
    files = _files(weights)
    device = torch.device(device)
    skip = attachment._child_name
    wanted, persistent = _meta_tensors(model, skip)
    index = _index(files)
    by_tensor: dict[int, list[str]] = {}
    for name, t in wanted.items():
        by_tensor.setdefault(id(t), []).append(name)
    plan: list[tuple[torch.Tensor, str]] = []
    missing = []
    for names in by_tensor.values():
        t = wanted[names[0]]
        key = next((n for n in names if n in index), None)
        if key is None:
            missing.append(names[0])
            continue
        if index[key].shape != tuple(t.shape):
            raise ValueError(
                f"{index[key].file}: '{key}' has shape {index[key].shape} but the model's is {tuple(t.shape)}"
            )
        plan.append((t, key))
    if missing:
        buffers = [n for n in missing if n in persistent]
        hint = ""
        if any(not persistent[n] for n in buffers):
            hint = (
                " (non-persistent buffers are never in weight files: build the model inside "
                "studio.init_empty_weights(), which keeps buffers real, instead of torch.device('meta'))"
            )
        raise ValueError(
            f"the weights file(s) have no tensor for {len(missing)} meta tensor(s) of the "
            f"model, e.g. {', '.join(repr(n) for n in missing[:3])}{hint}"
        )
    if strict:
        unexpected = sorted(set(index) - set(wanted))
        if unexpected:
            raise ValueError(
                f"{index[unexpected[0]].file}: '{unexpected[0]}' is not a meta tensor of the "
                f"model ({len(unexpected)} such key(s)); pass strict=False to ignore them"
            )

    config, graph = attachment.config, attachment.graph
    attachment.detach()  # restores requires_grad flags; the meta add-ins go away
    if sys.byteorder != "little":
        raise RuntimeError(
            "materialize() reads safetensors' little-endian data directly; this machine is big-endian"
        )
    by_file: dict[Path, list[tuple[torch.Tensor, str]]] = {}
    for t, key in plan:
        by_file.setdefault(index[key].file, []).append((t, key))
    real: dict[int, torch.Tensor] = {}
    for path, items in by_file.items():
        with open(path, "rb", buffering=0) as f:
            for t, key in sorted(items, key=lambda item: index[item[1]].start):
                value = _read(f, index[key])
                real[id(t)] = value.to(device=device, dtype=t.dtype)
    params: dict[int, nn.Parameter] = {}  # one Parameter per meta Parameter: tied weights stay tied
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for n, t in store.items():
                if t is None or id(t) not in real:
                    continue
                if isinstance(t, nn.Parameter):
                    if id(t) not in params:
                        params[id(t)] = nn.Parameter(real[id(t)], requires_grad=t.requires_grad)
                    store[n] = params[id(t)]
                else:
                    store[n] = real[id(t)]
    return attach(model, config, addins, graph=graph, freeze=attachment._freeze)
