"""Building the optimizer and the learning-rate scheduler a Trainer uses."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from .schedulers import SCHEDULES, lr_factor

OPTIMIZERS = ("adam", "adamw", "sgd")


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that require grad, each once (shared parameters are not repeated)."""
    seen: set[int] = set()
    params = []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def build_optimizer(
    spec: str | torch.optim.Optimizer | Callable[[list], torch.optim.Optimizer],
    params: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float | None = None,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """An optimizer from a name (``adam``, ``adamw``, ``sgd``), an instance, or ``callable(params)``.

    ``weight_decay=None`` means the usual default: 0.01 for AdamW, 0 for Adam and SGD.
    """
    params = list(params)
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if isinstance(spec, str):
        name = spec.lower()
        if name == "adamw":
            return torch.optim.AdamW(
                params, lr=lr, weight_decay=0.01 if weight_decay is None else weight_decay
            )
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay or 0.0)
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay or 0.0)
        raise ValueError(
            f"unknown optimizer {spec!r}; choose one of {', '.join(OPTIMIZERS)}, "
            "a torch.optim.Optimizer, or a callable(params) -> optimizer"
        )
    if callable(spec):
        opt = spec(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"the optimizer factory returned {type(opt).__name__}, not a torch.optim.Optimizer"
            )
        return opt
    raise TypeError(
        f"optimizer must be a name, a torch.optim.Optimizer or a callable, got {type(spec).__name__}"
    )


def build_scheduler(
    spec: Any,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    step_size: int | None = None,
    gamma: float = 0.1,
) -> Any:
    """A per-step scheduler: a name (``cosine``, ``step``, ``constant``; ``None`` = constant),
    an ``LRScheduler`` instance, or ``callable(optimizer)``. Named ones restart from the base lr."""
    if spec is None:
        spec = "constant"
    if isinstance(spec, str):
        if spec.lower() not in SCHEDULES:
            raise ValueError(
                f"unknown scheduler {spec!r}; choose one of {', '.join(SCHEDULES)}, "
                "a torch LRScheduler, or a callable(optimizer) -> scheduler"
            )
        for group in optimizer.param_groups:  # restart from the base lr if fit() runs again
            group["lr"] = group.setdefault("initial_lr", group["lr"])
        fn = lr_factor(spec.lower(), total_steps, warmup_steps, step_size=step_size, gamma=gamma)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
    if isinstance(spec, torch.optim.lr_scheduler.LRScheduler):
        return spec
    if callable(spec):
        return spec(optimizer)
    raise TypeError(f"scheduler must be a name, an LRScheduler or a callable, got {type(spec).__name__}")
