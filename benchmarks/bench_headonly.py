"""The head-only train step, for information: why it is no fair floor for LoRA.

With only ``head`` trainable, autograd stops at the head and the "train step" is little more than a
forward pass; the frozen floor (``head`` + ``pos_embed`` trainable) back-propagates through every
frozen block, as LoRA on ``qkv`` must. vit_small_patch16_224, batch 8, AdamW, arms interleaved.
"""

from __future__ import annotations

import copy

from .common import (
    Row,
    describe,
    interleave,
    lora_config,
    paired_ratio,
    print_rows,
    setup_torch,
    train_step,
    vit_train_batch,
)

SOURCE = "benchmarks/bench_headonly.py"


def _only(model, names: tuple[str, ...]):
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in names)
    return model


def run(quick: bool = False) -> list[Row]:
    import addin_studio as studio

    setup_torch()
    n = 2 if quick else 5
    plain, x, y = vit_train_batch(quick)
    batch = x.shape[0]
    head_only = _only(copy.deepcopy(plain), ("head",))
    floor = _only(copy.deepcopy(plain), ("head", "pos_embed"))
    lora = copy.deepcopy(plain)
    studio.attach(lora, lora_config(lora))
    times = interleave(
        {
            "head-only": train_step(head_only, x, y),
            "floor": train_step(floor, x, y),
            "LoRA": train_step(lora, x, y),
        },
        n=n,
        warmup=1,
    )
    what = f"vit_small, batch {batch}; "
    return [
        Row(
            "train step: head-only / frozen floor (info)",
            paired_ratio(times, "head-only", "floor"),
            None,
            detail=what + describe({k: times[k] for k in ("head-only", "floor")}),
            source=SOURCE,
        ),
        Row(
            "train step: head-only / ours LoRA (info)",
            paired_ratio(times, "head-only", "LoRA"),
            None,
            detail=what + describe({k: times[k] for k in ("head-only", "LoRA")}),
            source=SOURCE,
        ),
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print_rows(run(quick=parser.parse_args().quick))
