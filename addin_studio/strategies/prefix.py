"""Prefix tuning as a strategy: ``PrefixTuning`` wherever it can go in a model."""

from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from ..addins.prefix import WHERE, place_kind
from ..config import Config
from .capabilities import placement
from .partial import _ordered


def prefix_tuning(
    model: nn.Module,
    num_tokens: int = 10,
    projection: bool = False,
    hidden: int | None = None,
    trainable: Iterable[str] = (),
) -> Config:
    """Prefix tuning where it goes: on the transformers backbone (the shallowest module below the root
    whose forward takes a cache: one add-in for every layer), else on every timm ``Attention``.

    Args:
        model: The model to adapt.
        num_tokens: The number of prefix tokens.
        projection: Whether the prefixes come from an embedding passed through a two-layer MLP
            (PEFT's ``prefix_projection``).
        hidden: The MLP's hidden size (``None``: the add-in's default).
        trainable: Parameter patterns kept trainable too (e.g. ``["head"]``).

    Returns:
        The config.

    Raises:
        ValueError: The model has neither a transformers backbone below its root nor a timm
            ``Attention``; the message says where prefix tuning may go.
    """
    settings: dict[str, Any] = {"num_tokens": num_tokens}
    if projection:
        settings["projection"] = True
    if hidden is not None:
        settings["hidden"] = hidden
    kinds = {path: place_kind(m) for path, m in model.named_modules() if path}
    backbone = next((p for p, kind in kinds.items() if kind == "transformers"), None)
    paths = [backbone] if backbone is not None else _ordered(p for p, k in kinds.items() if k == "timm")
    if not paths and place_kind(model) == "transformers":
        raise ValueError(
            f"prefix tuning goes on a transformers backbone below the model's root, and "
            f"{type(model).__name__} is one itself: use the model with its head (e.g. "
            f"GPT2LMHeadModel, whose 'transformer' it goes on) or wrap it in a module"
        )
    if not paths:
        raise ValueError(f"{type(model).__name__} has no module prefix tuning can go on: {WHERE}")
    placements = [placement(p, "PrefixTuning", "adapt_forward", "pre", **settings) for p in paths]
    return Config(placements, tuple(trainable))
