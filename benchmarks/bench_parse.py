"""Config strings of 10 kB to 1 MB: parse and attach must grow linearly with the string's length.

A string of repeated Identity entries on a three-layer MLP (every entry one placement, so attach builds
one add-in per entry) is parsed and attached at 10 kB, 100 kB and 1 MB; the row is the growth exponent
between the two largest sizes (1.0 is linear; 2.0 quadratic); attach is timed with its detach.
"""

from __future__ import annotations

import gc
import time

from .common import Row, growth_exponent, print_rows, setup_torch

SOURCE = "benchmarks/bench_parse.py"
SIZES_KB = (10, 100, 1000)
QUICK_SIZES_KB = (5, 20)
MAX_EXPONENT = 1.15
ENTRY = "(Identity.adapt_output): ...->(fc2){inout1}->..."


def _time(fn, reps: int) -> float:
    """The fastest of ``reps`` runs, CPU time, with the garbage collector paused (its full passes scan
    everything already allocated and would blur the growth this measures)."""
    best = float("inf")
    for _ in range(reps):
        gc.collect()
        gc.disable()
        try:
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
        finally:
            gc.enable()
    return best


def run(quick: bool = False) -> list[Row]:
    import torch

    import addin_studio as studio
    from addin_studio.examples import TutorialMLP

    setup_torch()
    sizes = QUICK_SIZES_KB if quick else SIZES_KB
    model = TutorialMLP()
    graph = studio.trace(model, torch.randn(2, 64))
    costs: dict[str, list[float]] = {"parse": [], "attach": []}
    for kb in sizes:
        text = "\n".join([ENTRY] * (kb * 1000 // (len(ENTRY) + 1)))
        reps = 1 if quick else 3
        costs["parse"].append(_time(lambda: studio.parse(text), reps))
        cfg = studio.parse(text)

        def cycle() -> None:
            studio.attach(model, cfg, graph=graph).detach()

        costs["attach"].append(_time(cycle, reps))
    rows = []
    for what, ts in costs.items():
        exponent = growth_exponent(sizes[-2], ts[-2], sizes[-1], ts[-1])
        points = ", ".join(f"{t * 1e3:.0f} ms @ {kb} kB" for kb, t in zip(sizes, ts))
        rows.append(
            Row(
                f"growth of {what} time with string length (exponent)",
                exponent,
                MAX_EXPONENT,
                "",
                detail=f"repeated one-placement entries: {points}",
                source=SOURCE,
                extra={"kb": list(sizes), "seconds": ts},
            )
        )
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print_rows(run(quick=parser.parse_args().quick))
