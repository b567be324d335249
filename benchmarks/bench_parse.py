"""Config strings of 10 kB to 1 MB: parse and attach must grow linearly with the string's length.

A string of repeated Identity entries on a three-layer MLP (every entry one placement, so attach builds
one add-in per entry) is parsed and attached at 10 kB, 100 kB and 1 MB; the row is the growth exponent
between the two largest sizes (1.0 is linear; 2.0 quadratic).
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


def _time(fn) -> float:
    gc.collect()
    start = time.process_time()
    fn()
    return time.process_time() - start


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
        costs["parse"].append(_time(lambda: studio.parse(text)))
        cfg = studio.parse(text)
        holder: list = []
        costs["attach"].append(_time(lambda: holder.append(studio.attach(model, cfg, graph=graph))))
        holder[0].detach()
    rows = []
    for what, ts in costs.items():
        exponent = growth_exponent(sizes[-2], ts[-2], sizes[-1], ts[-1])
        points = ", ".join(f"{t * 1e3:.0f} ms @ {kb} kB" for kb, t in zip(sizes, ts))
        rows.append(Row(f"growth of {what} time with string length (exponent)", exponent, MAX_EXPONENT,
                        "", detail=f"repeated one-placement entries: {points}", source=SOURCE,
                        extra={"kb": list(sizes), "seconds": ts}))
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print_rows(run(quick=parser.parse_args().quick))
