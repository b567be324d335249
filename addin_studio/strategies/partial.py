"""Strategies that train part of the base model and attach nothing: LayerNorm tuning and partial-k."""

from __future__ import annotations

from typing import Iterable

from torch import nn

from ..config import Config
from ..config.paths import is_index, split_path
from .ready import _default_head

# Normalization layers whose affine parameters LayerNorm tuning trains (torch's and, by class name,
# timm's LayerNorm2d / RmsNorm and transformers' T5LayerNorm / LlamaRMSNorm, ...).
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, NORM_TYPES) or name.endswith(("LayerNorm", "RMSNorm", "RmsNorm", "LayerNorm2d"))


def _ordered(paths: Iterable[str]) -> list[str]:
    """Paths sorted so that those differing only in block indices sit together (they emit as ranges)."""

    def key(path: str) -> tuple:
        segs = split_path(path)
        return (tuple("#" if is_index(s) else s for s in segs), tuple(int(s) for s in segs if is_index(s)))

    return sorted(set(paths), key=key)


def _with_head(model: nn.Module, paths: list[str], head: bool | str | None) -> list[str]:
    if head is True:
        head = _default_head(model)
    if head:
        if head not in dict(model.named_modules()):
            raise ValueError(f"no module {head!r} in {type(model).__name__} to use as the head")
        paths = [p for p in paths if p != head and not p.startswith(head + ".")] + [head]
    return paths


def layernorm(model: nn.Module, head: bool | str | None = True) -> Config:
    """LayerNorm tuning (Zhao et al., 2023): only the normalization layers' scales and shifts train.

    Every LayerNorm/RMSNorm/GroupNorm/BatchNorm with parameters (also timm's and transformers' own norm
    classes, recognised by name) is kept trainable, plus the classifier head. Nothing is attached.

    Args:
        model: The model to adapt.
        head: ``True`` keeps the head found as :func:`head_only` finds it trainable; a path names it;
            ``None``/``False`` keeps none.

    Returns:
        The config (no placements).

    Raises:
        ValueError: The model has no normalization layer with parameters, or ``head`` names no module.
    """
    norms = [
        path
        for path, m in model.named_modules()
        if path and _is_norm(m) and any(True for _ in m.parameters(recurse=False))
    ]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no normalization layer with parameters to tune")
    return Config((), _with_head(model, _ordered(norms), head))


def _blocks(model: nn.Module, blocks: str | None) -> tuple[str, int]:
    """The path and length of the model's stack of repeated blocks (the longest, unless named)."""
    modules = dict(model.named_modules())
    stacks = {
        path: len(m)
        for path, m in modules.items()
        if isinstance(m, (nn.Sequential, nn.ModuleList))
        and len(m) > 1
        and all(type(c) is type(m[0]) for c in m)
    }
    if blocks is not None:
        if blocks not in stacks:
            raise ValueError(
                f"{blocks!r} is not a list of repeated blocks in {type(model).__name__}"
                f"{' (candidates: ' + ', '.join(sorted(stacks)) + ')' if stacks else ''}"
            )
        return blocks, stacks[blocks]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no list of repeated blocks; pass blocks='<path>'")
    order = {p: i for i, p in enumerate(modules)}
    path = max(stacks, key=lambda p: (stacks[p], -p.count("."), order[p]))  # ties: the last stage
    return path, stacks[path]


def partial_k(model: nn.Module, k: int, blocks: str | None = None, head: bool | str | None = True) -> Config:
    """Partial-k fine-tuning: the last ``k`` of the model's repeated blocks train, and the head.

    Args:
        model: The model to adapt.
        k: How many of the last blocks train (at least 1).
        blocks: The path of the block list; ``None``: the longest ``nn.Sequential``/``ModuleList`` of
            same-class blocks (e.g. a ViT's ``blocks``; among equally long ones the last, e.g.
            ResNet's ``layer4``).
        head: ``True``: every top-level module after the blocks that has parameters (final norm, head)
            trains too; a path names the head; ``None``/``False``: none.

    Returns:
        The config (no placements).

    Raises:
        ValueError: ``k`` is not a positive int or exceeds the number of blocks, or ``blocks``/``head``
            names no suitable module.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"partial_k needs k >= 1 blocks, got {k!r}")
    path, n = _blocks(model, blocks)
    if k > n:
        raise ValueError(f"partial_k: k={k} but {path!r} has only {n} blocks")
    prefix = f"{path}." if path else ""
    trainable = [f"{prefix}{i}" for i in range(n - k, n)]
    if head is True:  # the modules after the blocks (final norm, pooling, head) that have parameters
        names = [name for name, _ in model.named_children()]
        top = path.split(".")[0]
        after = names[names.index(top) + 1 :] if top in names else []
        trainable += [m for m in after if any(True for _ in getattr(model, m).parameters())]
        if not after:
            trainable = _with_head(model, trainable, True)
    elif head:
        trainable = _with_head(model, trainable, head)
    return Config((), trainable)


__all__ = ["NORM_TYPES", "layernorm", "partial_k"]
