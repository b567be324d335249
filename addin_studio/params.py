"""Parameter counts and a readable table of what trains."""

from __future__ import annotations

from typing import Callable
from weakref import WeakKeyDictionary

import torch
from torch import nn

#: model -> a function giving the table's first line (set by NamedAdapters: which adapter is active)
_HEADERS: "WeakKeyDictionary[nn.Module, Callable[[], str]]" = WeakKeyDictionary()


def set_table_header(model: nn.Module, header: Callable[[], str] | None) -> None:
    """Have :func:`trainable_table` of ``model`` start with ``header()`` (None: no header line)."""
    if header is None:
        _HEADERS.pop(model, None)
    else:
        _HEADERS[model] = header


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Count the trainable and all parameters of a model.

    A parameter shared by several modules counts once.

    Args:
        model: The model to count.

    Returns:
        ``(trainable, total)`` numbers of parameter elements.
    """
    trainable = total = 0
    for p in model.parameters():  # parameters() already de-duplicates shared tensors
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def _millions_or_thousands(counts: tuple[int, ...]) -> tuple[float, str]:
    # ZhiJian prints millions; small models would read "0.00M", so they get thousands instead
    return (1e6, "M") if max(counts) >= 1e6 else (1e3, "K")


def summary_line(model: nn.Module, exact: bool = False) -> str:
    """ZhiJian's line: ``Trainable/total parameters: 0.03M / 38.64M (0.08843%)``.

    Counts are in millions, or in thousands (``3.67K / 82.39K``) for models under a million parameters.

    Args:
        model: The model to count.
        exact: With ``True`` every digit is written instead (``33,546 / 38,641,384``, the Studio's live
            line).

    Returns:
        The one-line summary.
    """
    trainable, total = count_parameters(model)
    if exact:
        counts = f"{trainable:,} / {total:,}"
    else:
        scale, unit = _millions_or_thousands((trainable, total))
        counts = f"{trainable / scale:.2f}{unit} / {total / scale:.2f}{unit}"
    pct = 100.0 * trainable / total if total else 0.0
    return f"Trainable/total parameters: {counts} ({pct:.4g}%)"


def trainable_table(model: nn.Module) -> str:
    """A table of the trainable parameters (name, module type, shape, count) and the summary line.

    On a model with :class:`~addin_studio.NamedAdapters`, the first line says which adapter is active
    (``Active adapter: b (adapters: a, b*, ab)``): the trainable rows are that adapter's. Running
    statistics an attachment updates are listed too, as ``(statistics)`` rows.

    Args:
        model: The model to list.

    Returns:
        The table as text, ending with the :func:`summary_line`.
    """
    owners: dict[str, str] = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            owners.setdefault(f"{mod_name}.{p_name}" if mod_name else p_name, type(module).__name__)
    holders: dict[int, int] = {}  # a tensor shared by several modules (FacT's factors) is one row
    for module in model.modules():  # a module shared by several parents holds its tensors once
        for p in module._parameters.values():
            if p is not None:
                holders[id(p)] = holders.get(id(p), 0) + 1

    def kind(name: str, p: nn.Parameter) -> str:
        shared = holders.get(id(p), 1)
        return owners.get(name, "") + (f" (shared by {shared})" if shared > 1 else "")

    rows = [
        (name, kind(name, p), "x".join(str(s) for s in p.shape) or "scalar", f"{p.numel():,}")
        for name, p in model.named_parameters()
        if p.requires_grad
    ]
    # running statistics an attachment updates and saves with the adapters (buffers, not parameters)
    rows += [
        (
            f"{path}.{n}" if path else n,
            f"{type(m).__name__} (statistics)",
            "x".join(str(s) for s in t.shape) or "scalar",
            f"{t.numel():,}",
        )
        for path, m in model.named_modules()
        if stats_owned(m)
        for n, t in stat_buffers(m).items()
    ]
    header = ("Parameter", "Type", "Shape", "Count")
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(4)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"

    def fmt(r):
        return (
            "| "
            + " | ".join(r[i].ljust(widths[i]) if i < 3 else r[i].rjust(widths[i]) for i in range(4))
            + " |"
        )

    head = _HEADERS.get(model)
    out = [head()] if head is not None else []
    out += [line, fmt(header), line.replace("-", "=")]
    out += [fmt(r) for r in rows] or ["| " + "(no trainable parameters)".ljust(len(line) - 4) + " |"]
    out += [line, summary_line(model)]
    return "\n".join(out)


# -- running statistics of normalization layers (the engine marks those an attachment owns) --------
STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def has_running_stats(module: nn.Module) -> bool:
    """Whether ``module`` keeps running statistics (tensor ``running_mean`` and ``running_var`` buffers)."""
    return isinstance(module._buffers.get("running_mean"), torch.Tensor) and isinstance(
        module._buffers.get("running_var"), torch.Tensor
    )


def stat_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """The statistics buffers of one normalization layer (``num_batches_tracked`` when it has one)."""
    found = {n: module._buffers.get(n) for n in STAT_BUFFERS}
    return {n: t for n, t in found.items() if isinstance(t, torch.Tensor)}


_OWNED: "WeakKeyDictionary[nn.Module, set[int]]" = WeakKeyDictionary()


def own_stats(module: nn.Module, owner: object) -> None:
    """Record that ``owner`` (an attachment) updates, saves and restores ``module``'s statistics."""
    _OWNED.setdefault(module, set()).add(id(owner))


def disown_stats(module: nn.Module, owner: object) -> None:
    owners = _OWNED.get(module)
    if owners is not None:
        owners.discard(id(owner))
        if not owners:
            del _OWNED[module]


def stats_owned(module: nn.Module) -> bool:
    """Whether a live attachment updates (and will save) ``module``'s running statistics."""
    return bool(_OWNED.get(module))
