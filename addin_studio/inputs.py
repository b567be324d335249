"""Model inputs: move a (nested) batch to a device and call a model with a tensor, tuple or dict input.

One helper for every place that runs a model on user data (the tracer's example input, the Trainer's
batches), so that they accept the same input forms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (or buffer); ``None`` for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


def to_device(value: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``value`` with every tensor in it (tuples, lists and dicts, nested) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device, non_blocking) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device, non_blocking) for k, v in value.items()}
    return value


def call_model(
    model: nn.Module,
    inputs: Any,
    device: torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> Any:
    """Call ``model`` with ``inputs``: a dict is keyword inputs, a tuple positional inputs, anything
    else the one input. Tensors (in ``inputs`` and ``kwargs``) move to ``device`` first — by default
    the model's own device."""
    device = model_device(model) if device is None else device
    if device is not None:
        inputs = to_device(inputs, device, non_blocking)
        kwargs = to_device(kwargs, device, non_blocking)
    if isinstance(inputs, dict):
        return model(**inputs, **kwargs)
    if isinstance(inputs, tuple):
        return model(*inputs, **kwargs)
    return model(inputs, **kwargs)
