"""Running statistics of normalization layers (BatchNorm and friends) while add-ins train.

A frozen base must stay frozen: a layer with running statistics (``running_mean`` / ``running_var``
buffers: BatchNorm1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d, ...) none of whose own parameters
train *normalizes with its running statistics in training too*, as in eval mode, and never updates
them — what timm's ``freeze_batch_norm_2d`` and Detectron2's ``FrozenBatchNorm2d`` do for frozen
backbones. The add-ins then learn against the function the saved adapter file will compute, and
detaching gives the base back bit for bit. The mechanism is a pair of forward hooks on each such layer
(it works in any training loop, and ``model.train()`` does not undo it): the pre-hook switches the
layer's ``training`` flag off for its own forward, the post-hook switches it back.

A layer whose parameters train (``trainable(...)``, e.g. the bitfit strategy) or that a config names
in ``running_stats(...)`` updates its statistics as usual; those buffers then belong to the attachment:
snapshotted at attach, saved with the adapters, restored at detach.
"""

from __future__ import annotations

import weakref
from typing import Iterable, Mapping

from torch import nn

from ..params import STAT_BUFFERS, disown_stats, has_running_stats, own_stats, stat_buffers, stats_owned
from .freezing import pattern_matches

__all__ = [
    "STAT_BUFFERS",
    "disown_stats",
    "has_running_stats",
    "hold_stats",
    "norm_layers",
    "own_stats",
    "release_stats",
    "split_norms",
    "stat_buffers",
    "stats_frozen",
    "stats_owned",
]


def norm_layers(model: nn.Module, skip: Iterable[str] = ()) -> dict[str, nn.Module]:
    """``{path: module}`` of the layers of ``model`` with running statistics (outside ``skip`` prefixes)."""
    skip = tuple(f"{s}." for s in skip)
    return {
        path: m
        for path, m in model.named_modules()
        if not (path + ".").startswith(skip) and has_running_stats(m)
    }


def split_norms(
    norms: Mapping[str, nn.Module], keep: set[str], patterns: Iterable[str]
) -> tuple[list[str], list[str], list[str]]:
    """``(frozen, updating, unmatched patterns)``: a layer updates its statistics when one of its own
    parameters is kept trainable or a ``running_stats`` pattern names it (or a module above it)."""
    patterns = list(patterns)
    hits = {p: [path for path in norms if pattern_matches(p, path)] for p in patterns}
    named = {path for found in hits.values() for path in found}
    frozen: list[str] = []
    updating: list[str] = []
    for path, module in norms.items():
        own = {f"{path}.{n}" if path else n for n, _ in module.named_parameters(recurse=False)}
        (updating if path in named or own & keep else frozen).append(path)
    return frozen, updating, [p for p, found in hits.items() if not found]


class _Frozen:
    """Forward hooks that run one layer in eval mode while any live attachment holds it frozen."""

    def __init__(self, module: nn.Module) -> None:
        self.owners: set[int] = set()
        self.was: list[bool] = []  # one entry per forward in flight (re-entrant, e.g. checkpointing)
        self.handles = (
            module.register_forward_pre_hook(self.pre),
            module.register_forward_hook(self.post, always_call=True),
        )

    def pre(self, module: nn.Module, args: tuple) -> None:
        self.was.append(module.training)
        module.training = False

    def post(self, module: nn.Module, args: tuple, output: object) -> None:
        if self.was:
            module.training = self.was.pop()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


_FROZEN: "weakref.WeakKeyDictionary[nn.Module, _Frozen]" = weakref.WeakKeyDictionary()


def hold_stats(module: nn.Module, owner: object) -> None:
    """Keep ``module``'s running statistics fixed (and used) in training, for ``owner``."""
    frozen = _FROZEN.get(module)
    if frozen is None:
        frozen = _FROZEN[module] = _Frozen(module)
    frozen.owners.add(id(owner))


def release_stats(module: nn.Module, owner: object) -> None:
    """Undo :func:`hold_stats` for ``owner``; the last owner's release removes the hooks."""
    frozen = _FROZEN.get(module)
    if frozen is None:
        return
    frozen.owners.discard(id(owner))
    if not frozen.owners:
        frozen.remove()
        del _FROZEN[module]


def stats_frozen(module: nn.Module) -> bool:
    """Whether an attachment holds ``module``'s running statistics fixed."""
    return module in _FROZEN
