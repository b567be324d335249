"""Kept-trainable patterns: match parameter names, freeze the rest, restore the flags later."""
from __future__ import annotations

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
