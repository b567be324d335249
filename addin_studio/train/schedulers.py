"""Learning-rate schedules as per-step multipliers of the base learning rate (for ``LambdaLR``)."""

from __future__ import annotations

import math
from typing import Callable

SCHEDULES = ("cosine", "step", "constant")


def lr_factor(
    name: str,
    total_steps: int,
    warmup_steps: int = 0,
    *,
    step_size: int | None = None,
    gamma: float = 0.1,
    min_factor: float = 0.0,
) -> Callable[[int], float]:
    """The multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, whatever the schedule.
    After it, with ``t = step - warmup_steps`` and ``T = total_steps - warmup_steps``:

    - ``cosine``: ``min_factor + (1 - min_factor) * (1 + cos(pi * t / T)) / 2`` (1 at ``t = 0``,
      ``min_factor`` at ``t = T``);
    - ``step``: ``gamma ** (t // step_size)``; ``step_size`` defaults to ``max(1, T // 3)``;
    - ``constant``: 1.
    """
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULES)}, "
            "a torch LRScheduler, or a callable(optimizer) -> scheduler"
        )
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    span = max(1, total_steps - warmup_steps)
    if step_size is None:
        step_size = max(1, span // 3)
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(step - warmup_steps, span)
        if name == "cosine":
            return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t / span))
        if name == "step":
            return gamma ** (t // step_size)
        return 1.0

    return factor
