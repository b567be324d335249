"""Classification metrics: top-k accuracy and a running average."""

from __future__ import annotations

from typing import Sequence

import torch


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the ``k`` highest logits, for each ``k``.

    ``k`` larger than the number of classes counts every sample as correct (as top-5 on a
    3-class problem should). ``logits`` is ``[batch, classes]``, ``targets`` ``[batch]`` class indices.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(
            f"targets must be [batch] class indices matching logits {tuple(logits.shape)}, "
            f"got shape {tuple(targets.shape)}"
        )
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices  # [batch, maxk]
    hits = top.eq(targets.view(-1, 1))
    return [int(hits[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


def accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[float]:
    """Top-k accuracies in percent (0-100), one per ``k``."""
    n = targets.shape[0]
    if n == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return [100.0 * c / n for c in topk_correct(logits, targets, ks)]


class AverageMeter:
    """Running weighted mean (e.g. the loss averaged over the samples of an epoch)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.total += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.total / self.count if self.count else float("nan")
