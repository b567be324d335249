"""LoRA speed on CPU: timm vit_small_patch16_224, batch 8, LoRA r=8 (alpha 16) on every ``qkv``.

Arms, interleaved round-robin in one process (2 threads), median of N after a warm-up:

- ``ours``: a train step (forward, backward, AdamW step) with our hook-based LoRA;
- ``peft``: the same step with Hugging Face PEFT's LoRA (same A and B);
- ``floor``: the same model with no add-ins, only ``head`` and ``pos_embed`` trainable, so the
  backward pass still runs through every frozen block;
- ``merged`` / ``plain``: inference (no grad) after ``att.merge()`` vs the model without add-ins.

Targets: ours/peft <= 1.00, ours/floor <= 1.10, merged/plain <= 1.02.
Run: ``python -m benchmarks.bench_lora [--quick]``.
"""

from __future__ import annotations

import copy
import sys

from .common import (
    Row,
    describe,
    interleave,
    lora_config,
    paired_ratio,
    peft_lora,
    print_rows,
    same_lora_weights,
    setup_torch,
    train_step,
    vit_train_batch,
)


def run(quick: bool = False) -> list[Row]:
    import torch

    import addin_studio as studio

    setup_torch()
    n = 2 if quick else 9
    plain, x, y = vit_train_batch(quick)

    ours = copy.deepcopy(plain).train()
    att = studio.attach(ours, lora_config(ours))
    peft = peft_lora(copy.deepcopy(plain)).train()
    same_lora_weights(att, peft)

    floor = copy.deepcopy(plain).train()
    for name, p in floor.named_parameters():
        p.requires_grad_(name.startswith("head.") or name == "pos_embed")

    train = interleave(
        {
            "ours": train_step(ours, x, y, list(att.addins.parameters())),
            "peft": train_step(peft, x, y, [p for p in peft.parameters() if p.requires_grad]),
            "floor": train_step(floor, x, y, [p for p in floor.parameters() if p.requires_grad]),
        },
        n=n,
        warmup=2,
    )

    merged = copy.deepcopy(plain).eval()
    merged_att = studio.attach(merged, att.config)
    merged_att.addins.load_state_dict(att.addins.state_dict())
    merged_att.merge()
    reference = copy.deepcopy(plain).eval()

    def infer(model):
        def call() -> None:
            with torch.no_grad():
                model(x)

        return call

    inference = interleave({"merged": infer(merged), "plain": infer(reference)}, n=n + 4, warmup=2)
    source = "benchmarks/bench_lora.py"
    return [
        Row(
            "LoRA train step / PEFT",
            paired_ratio(train, "ours", "peft"),
            1.00,
            detail=describe({k: train[k] for k in ("ours", "peft")}),
            source=source,
        ),
        Row(
            "LoRA train step / frozen floor",
            paired_ratio(train, "ours", "floor"),
            1.10,
            detail=describe({k: train[k] for k in ("ours", "floor")}),
            source=source,
        ),
        Row(
            "merged LoRA inference / plain",
            paired_ratio(inference, "merged", "plain"),
            1.02,
            detail=describe(inference),
            source=source,
        ),
    ]


if __name__ == "__main__":
    print_rows(run(quick="--quick" in sys.argv))
