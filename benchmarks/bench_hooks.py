"""Eval forward cost of hooks: identity add-in on every block / plain, unmerged LoRA / PEFT unmerged.

``vit_small_patch16_224`` (random weights), batch 8, ``torch.inference_mode()``, 2 threads. Every arm is its
own copy of the same weights; the arms run round-robin and each ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import copy

from .common import (
    Row,
    describe,
    interleave,
    lora_config,
    peft_lora,
    paired_ratio,
    print_rows,
    same_lora_weights,
    setup_torch,
    vit,
)

SOURCE = "benchmarks/bench_hooks.py"
IDENTITY = "(Identity.adapt_output): ...->(blocks[0:12]){inout1}->..."


def run(quick: bool = False) -> list[Row]:
    import torch

    import addin_studio as studio

    setup_torch()
    batch, n = (1, 2) if quick else (8, 15)
    plain = vit().eval()
    identity = copy.deepcopy(plain)
    studio.attach(identity, IDENTITY)
    ours = copy.deepcopy(plain)
    att = studio.attach(ours, lora_config(ours))
    peft = peft_lora(copy.deepcopy(plain)).eval()
    same_lora_weights(att, peft)
    x = torch.randn(batch, 3, 224, 224)
    arms = {"plain": plain, "identity": identity, "ours-unmerged": ours, "peft-unmerged": peft}
    with torch.inference_mode():
        ref = plain(x)
        assert torch.equal(identity(x), ref), "the identity add-in changed the output"
        diff = float((ours(x) - peft(x)).abs().max())
        assert diff < 1e-3, f"ours and PEFT LoRA disagree by {diff}"
        times = interleave({k: (lambda m=m: m(x)) for k, m in arms.items()}, n=n, warmup=1)
    what = f"vit_small, batch {batch}"
    return [
        Row(
            "eval forward: identity {inout} on every block / plain",
            paired_ratio(times, "identity", "plain"),
            1.03,
            detail=f"{what}; " + describe({k: times[k] for k in ("identity", "plain")}),
            source=SOURCE,
        ),
        Row(
            "eval forward: unmerged LoRA ours / PEFT",
            paired_ratio(times, "ours-unmerged", "peft-unmerged"),
            1.00,
            detail=f"{what}; r=8 on qkv; "
            + describe({k: times[k] for k in ("ours-unmerged", "peft-unmerged")}),
            source=SOURCE,
        ),
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print_rows(run(quick=parser.parse_args().quick))
