"""Peak memory of a LoRA training step (vit_small_patch16_224, batch 8, LoRA r=8 on qkv): ours / PEFT.

Each arm runs in a fresh interpreter (``python -m benchmarks.bench_memory --arm ours``) so that its
peak RSS (``ru_maxrss``) is its own; both arms import the same libraries (torch, timm, peft,
addin_studio) and train the same parameters (the LoRA factors; the base is frozen) with AdamW. The
arms alternate ours, PEFT, ours, PEFT... and each value is the median over its runs.
"""

from __future__ import annotations

import json

from .common import (
    LORA_STRING,
    Row,
    median,
    peak_rss_mb,
    peft_lora,
    print_rows,
    rss_mb,
    run_json_subprocess,
    setup_torch,
    vit,
)

SOURCE = "benchmarks/bench_memory.py"
ARMS = ("ours", "peft")


def measure(arm: str, quick: bool) -> dict[str, float]:
    """Build the arm, run training steps, return peak RSS figures in MiB (runs in the subprocess)."""
    import gc

    import peft  # noqa: F401 - both arms pay for the same imports
    import torch
    import torch.nn.functional as F

    import addin_studio as studio

    setup_torch()
    batch, steps = (2, 1) if quick else (8, 3)
    model = vit().train()
    if arm == "ours":
        studio.attach(model, LORA_STRING)
    elif arm == "peft":
        model = peft_lora(model).train()
    else:
        raise ValueError(f"unknown arm {arm!r}; use one of {ARMS}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 1000, (batch,))
    gc.collect()
    before = rss_mb()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = peak_rss_mb()
    return {
        "peak_mb": peak,
        "before_step_mb": before,
        "step_mb": peak - before,
        "trainable": sum(p.numel() for p in params),
    }


def run(quick: bool = False) -> list[Row]:
    reps = 1 if quick else 2
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    jobs = [(arm, ["--arm", arm] + (["--quick"] if quick else [])) for _ in range(reps) for arm in ARMS]
    if quick:  # the smoke run: both arms at once (peak RSS is per process; timing does not matter)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(jobs)) as pool:
            outputs = list(pool.map(lambda job: run_json_subprocess("benchmarks.bench_memory", job[1]), jobs))
    else:
        outputs = [run_json_subprocess("benchmarks.bench_memory", args) for _, args in jobs]
    for (arm, _), out in zip(jobs, outputs):
        results[arm].append(out)
    med = {
        arm: {k: median([r[k] for r in rs]) for k in ("peak_mb", "step_mb", "trainable")}
        for arm, rs in results.items()
    }
    if med["ours"]["trainable"] != med["peft"]["trainable"]:
        raise AssertionError(f"the arms train different parameter counts: {med}")
    batch = 2 if quick else 8
    what = f"vit_small, batch {batch}, {int(med['ours']['trainable']):,} trainable, fresh process per arm"
    return [
        Row(
            "peak RSS of a LoRA train step: ours / PEFT",
            med["ours"]["peak_mb"] / med["peft"]["peak_mb"],
            1.00,
            detail=f"{what}; ours {med['ours']['peak_mb']:.0f} MB, PEFT {med['peft']['peak_mb']:.0f} MB "
            f"(median of {reps})",
            source=SOURCE,
        ),
        Row(
            "RSS growth during the train step: ours / PEFT",
            med["ours"]["step_mb"] / med["peft"]["step_mb"],
            None,
            detail=f"peak minus RSS before the first step: ours {med['ours']['step_mb']:.0f} MB, "
            f"PEFT {med['peft']['step_mb']:.0f} MB",
            source=SOURCE,
        ),
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arm", choices=ARMS, help="measure one arm and print JSON (used by run())")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(measure(args.arm, args.quick)))
    else:
        print_rows(run(quick=args.quick))
