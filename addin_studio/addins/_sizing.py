"""Shared sizing helpers for the built-in add-ins: which dimension of a feature holds its channels."""

from __future__ import annotations

import torch
from torch import nn

from .base import PointInfo


def feature_layout(point: PointInfo, what: str) -> tuple[int, bool]:
    """``(features, channel_first)`` of the feature at ``point``.

    Token sequences and Linear outputs carry features last; 4-D maps of conv nets carry them in
    dimension 1 (``PointInfo.features``). At a Linear, Conv or LayerNorm layer the width comes from the
    layer itself (channels first for every Conv); elsewhere the traced shape is needed.
    """
    known = _from_module(point)  # a layer's own width is exact, whatever the feature's rank
    if known is not None:
        return known
    if point.shape is None:
        raise ValueError(
            f"{what} is sized from the feature at {point.path}:{point.side}, whose shape is "
            f"unknown: pass example_input= to attach()"
        )
    features = point.features
    channel_first = len(point.shape) == 4 and features == point.shape[1]
    return int(features), channel_first


def _from_module(point: PointInfo) -> tuple[int, bool] | None:
    """The width (and layout) a Linear/Conv/LayerNorm layer implies at its point, or None."""
    m = point.module
    if isinstance(m, nn.Linear):
        return (m.out_features if point.side == "post" else m.in_features), False
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return (m.out_channels if point.side == "post" else m.in_channels), True
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        return m.normalized_shape[0], False
    return None


def positive_int(value: object, name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} {name} must be a positive integer, got {value!r}")
    return value


def channels_last(x: torch.Tensor, channel_first: bool) -> torch.Tensor:
    return x.movedim(1, -1) if channel_first else x


def channels_back(x: torch.Tensor, channel_first: bool) -> torch.Tensor:
    return x.movedim(-1, 1) if channel_first else x
