"""Kept-trainable patterns: match parameter names, freeze the rest, restore the flags later."""

from __future__ import annotations

import weakref
from fnmatch import fnmatchcase
from typing import Iterable

from torch import nn


def pattern_matches(pattern: str, name: str) -> bool:
    """``head`` matches ``head.weight``; ``pos_embed`` matches itself; ``*.bias`` and
    ``blocks.*.norm1`` are globs over dotted parameter names."""
    if name == pattern or name.startswith(pattern + "."):
        return True
    if any(c in pattern for c in "*?["):
        return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")
    return False


def match_trainable(names: Iterable[str], patterns: Iterable[str]) -> tuple[set[str], list[str]]:
    """The parameter names that the patterns keep trainable, and the patterns that matched nothing."""
    names = list(names)
    keep: set[str] = set()
    unmatched = []
    for pattern in patterns:
        hits = {n for n in names if pattern_matches(pattern, n)}
        if not hits:
            unmatched.append(pattern)
        keep |= hits
    return keep, unmatched


def freeze_except(model: nn.Module, keep: set[str]) -> dict[str, bool]:
    """Set ``requires_grad`` to ``name in keep`` for every parameter; return the previous flags."""
    previous = {}
    for name, p in model.named_parameters():
        previous[name] = p.requires_grad
        p.requires_grad_(name in keep)
    return previous


def restore_flags(model: nn.Module, previous: dict[str, bool]) -> None:
    for name, p in model.named_parameters():
        if name in previous:
            p.requires_grad_(previous[name])


class _Holds:
    """The freezing state of one model shared by its live attachments."""

    def __init__(self, original: dict[str, bool]) -> None:
        self.original = original  # every base flag before the first attachment froze anything
        self.keeps: dict[int, set[str]] = {}  # id(attachment) -> what it keeps trainable


_HOLDS: "weakref.WeakKeyDictionary[nn.Module, _Holds]" = weakref.WeakKeyDictionary()


def hold(model: nn.Module, owner: object, keep: set[str], base: set[str]) -> None:
    """Freeze the ``base`` parameters of ``model`` for ``owner`` except ``keep``.

    Several attachments compose: a base parameter is trainable while any live attachment keeps it,
    frozen while attachments hold the model and none keeps it, and gets its original flag back when the
    last one releases — in whatever order they are released. Add-in parameters are never touched.
    """
    holds = _HOLDS.get(model)
    if holds is None:
        holds = _HOLDS[model] = _Holds({n: p.requires_grad for n, p in model.named_parameters() if n in base})
    holds.keeps[id(owner)] = set(keep)
    _apply_holds(model, holds, base)


def release(model: nn.Module, owner: object, base: set[str]) -> None:
    """Undo :func:`hold` for ``owner``; the last release restores every original flag."""
    holds = _HOLDS.get(model)
    if holds is None or holds.keeps.pop(id(owner), None) is None:
        return
    if holds.keeps:
        _apply_holds(model, holds, base)
    else:
        restore_flags(model, holds.original)
        del _HOLDS[model]


def _apply_holds(model: nn.Module, holds: _Holds, base: set[str]) -> None:
    kept = set().union(*holds.keeps.values())
    for name, p in model.named_parameters():
        if name in base and name in holds.original:
            p.requires_grad_(name in kept)
