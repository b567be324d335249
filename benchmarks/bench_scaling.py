"""Engine costs: attach+detach of 100 placements, and how trace / attach grow with the module count.

Attach runs without an example input (no forward pass: validation, add-in construction, hooks,
freezing); the config string is parsed inside the timed region. Times are CPU seconds of this process
(``time.process_time``: the engine is single-threaded Python, so on an idle machine this is the wall
time, while on a shared one it leaves out the time other tenants hold the cores); the 100-placement
row also shows the wall time. Python's cyclic GC is off while timing (as in
:func:`benchmarks.common.interleave`: a full collection scans the whole heap, torch included); the
GC-on time at the largest size is in the detail.

The growth model is an ``nn.Sequential`` of ``Linear(8, 8)`` layers (they run single-threaded) with an
``Identity`` ``{inout}`` add-in on every layer, so placements grow with modules. Growth is summarised
by the exponent between the two largest sizes (1.0 = linear, 2.0 = quadratic) and the per-module slope
of a least-squares line.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

from .common import Row, growth_exponent, median, print_rows, setup_torch, vit

SOURCE = "benchmarks/bench_scaling.py"
SIZES = (100, 1_000, 10_000)
QUICK_SIZES = (10, 100, 1_000)
MAX_EXPONENT = 1.15  # "linear" with room for timer noise


def _median_time(
    fn: Callable[[], object], n: int, collect: bool = False, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median seconds of ``fn()`` over ``n`` calls after a warm-up; Python's cyclic garbage collector
    is off unless ``collect`` (a full collection scans the whole heap, torch included: its cost follows
    the heap, not the engine)."""
    fn()  # warm-up
    times = []
    gc.collect()
    was_enabled = gc.isenabled()
    if not collect:
        gc.disable()
    try:
        for _ in range(n):
            start = clock()
            fn()
            times.append(clock() - start)
    finally:
        if was_enabled:
            gc.enable()
    return median(times)


def hundred_placements(quick: bool) -> list[Row]:
    """Parse + attach + detach of 100 ``{inout}`` placements on vit_small's leaf modules."""
    import addin_studio as studio

    model = vit().eval()
    leaves = [p for p, m in model.named_modules() if p and not list(m.children())][:100]
    if len(leaves) < 100:
        raise AssertionError(f"vit_small has only {len(leaves)} leaf modules")
    text = "\n".join(f"(Identity.adapt_output): ...->({p}){{inout1}}->..." for p in leaves)

    def cycle() -> None:
        att = studio.attach(model, text)
        if len(att.entries) != 100:
            raise AssertionError(f"expected 100 placements, got {len(att.entries)}")
        att.detach()

    reps = 3 if quick else 21
    cpu = _median_time(cycle, reps, clock=time.process_time)
    wall = _median_time(cycle, reps)
    parse_s = _median_time(lambda: studio.parse(text), reps, clock=time.process_time)
    return [
        Row(
            "attach+detach: 100 placements on vit_small",
            cpu * 1e3,
            50.0,
            "ms",
            detail=f"CPU time, median of {reps} (wall {wall * 1e3:.1f} ms); parse {parse_s * 1e3:.1f} ms "
            f"of it; no example input",
            source=SOURCE,
        )
    ]


def _chain(n: int):
    from torch import nn

    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(*[nn.Linear(8, 8) for _ in range(n)])

        def forward(self, x):
            return self.layers(x)

    return Chain()


def _fit_slope(ns: list[int], ts: list[float]) -> float:
    """Least-squares slope of t against n (seconds per module)."""
    mn, mt = sum(ns) / len(ns), sum(ts) / len(ts)
    return sum((a - mn) * (b - mt) for a, b in zip(ns, ts)) / sum((a - mn) ** 2 for a in ns)


def growth(quick: bool) -> list[Row]:
    import torch

    import addin_studio as studio

    sizes = QUICK_SIZES if quick else SIZES
    costs: dict[str, list[float]] = {"trace": [], "attach+detach": []}
    for n in sizes:
        model = _chain(n)
        x = torch.randn(2, 8)
        text = f"(Identity.adapt_output): ...->(layers[0:{n}]){{inout1}}->..."
        reps = 1 if quick else max(3, 3000 // n)

        def cycle() -> None:
            att = studio.attach(model, text)
            att.detach()

        cpu = time.process_time
        costs["trace"].append(_median_time(lambda: studio.trace(model, x), reps, clock=cpu))
        costs["attach+detach"].append(_median_time(cycle, reps, clock=cpu))
        if n == sizes[-1]:
            with_gc = {
                "trace": _median_time(lambda: studio.trace(model, x), reps, True, cpu),
                "attach+detach": _median_time(cycle, reps, True, cpu),
            }
    rows = []
    for what, ts in costs.items():
        exponent = growth_exponent(sizes[-2], ts[-2], sizes[-1], ts[-1])
        slope_us = _fit_slope(list(sizes), ts) * 1e6
        points = ", ".join(f"{t * 1e3:.1f} ms @ {n:,}" for n, t in zip(sizes, ts))
        label = "with a forward pass" if what == "trace" else "one placement per module"
        rows.append(
            Row(
                f"growth of {what} time with module count (exponent)",
                exponent,
                MAX_EXPONENT,
                "",
                detail=f"{label}: {points}; slope {slope_us:.1f} us/module; with Python's GC on: "
                f"{with_gc[what] * 1e3:.1f} ms @ {sizes[-1]:,}",
                source=SOURCE,
                extra={"sizes": list(sizes), "seconds": ts, "slope_us": slope_us},
            )
        )
    return rows


def run(quick: bool = False) -> list[Row]:
    setup_torch()
    return hundred_placements(quick) + growth(quick)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print_rows(run(quick=parser.parse_args().quick))
