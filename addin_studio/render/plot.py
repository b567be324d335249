"""The loss history: one smoothing (a bias-corrected EMA) for every view, the live plot's bounded series
and the static PNG (the Studio at the end of a run, the report). matplotlib is imported only there."""

from __future__ import annotations

import io
import math
from typing import Sequence

MAX_POINTS = 400  # the page never gets more than this many points per series
SMOOTHING = 0.9  # exponential moving average of the per-step loss


def smooth(values: Sequence[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average (what TensorBoard shows)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def downsample(points: list[list[float]], limit: int = MAX_POINTS) -> list[list[float]]:
    """Every k-th point (and always the last) so that at most ``limit`` remain."""
    if len(points) <= limit:
        return points
    k = math.ceil(len(points) / limit)
    picked = points[::k]
    if picked[-1] is not points[-1]:
        picked.append(points[-1])
    return picked


def series(losses: Sequence[float], val_acc: Sequence[tuple[int, float]], total_steps: int | None) -> dict:
    """What the page draws: ``loss`` and ``smooth`` as ``[step, value]``, ``val`` as ``[step, acc1]``."""
    finite = [(i, v) for i, v in enumerate(losses, 1) if math.isfinite(v)]
    sm = smooth([v for _, v in finite])
    return {
        "loss": downsample([[i, round(v, 5)] for i, v in finite]),
        "smooth": downsample([[i, round(s, 5)] for (i, _), s in zip(finite, sm)]),
        "val": [[int(s), round(float(a), 3)] for s, a in val_acc],
        "total": int(total_steps or len(losses)),
    }


def history_png(
    losses: Sequence[float],
    val_acc: Sequence[tuple[int, float]],
    title: str = "Addin Studio training",
    size: tuple[float, float] = (6.0, 2.6),
    dpi: int = 90,
) -> bytes:
    """A PNG of a run: loss per step and its :func:`smooth` line; val Acc@1 at its steps when given."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    steps = list(range(1, len(losses) + 1))
    ax.plot(steps, losses, color="#9ab7d3", linewidth=0.8, label="loss")
    ax.plot(steps, smooth(losses), color="#1f5f99", linewidth=1.6, label="loss (smoothed)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if val_acc:
        ax2 = ax.twinx()
        ax2.plot(
            [s for s, _ in val_acc], [a for _, a in val_acc], "o-", color="#c4622d", label="val Acc@1 (%)"
        )
        ax2.set_ylabel("val Acc@1 (%)")
        ax2.set_ylim(0, 100)
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
