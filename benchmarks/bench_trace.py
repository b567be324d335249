"""studio.trace: against torchinfo's summary on vit_base, and on the meta device for a model too big
to instantiate in RAM (a ViT-22B-sized config: 48 blocks of width 6144, about 87 GB of fp32 weights)."""

from __future__ import annotations

import time

from .common import (
    Row,
    describe,
    interleave,
    median,
    paired_ratio,
    peak_rss_mb,
    print_rows,
    rss_mb,
    setup_torch,
    vit,
)

SOURCE = "benchmarks/bench_trace.py"
# ViT-22B (Dehghani et al. 2023) widths; timm's VisionTransformer with these settings.
GIANT = dict(img_size=224, patch_size=14, embed_dim=6144, depth=48, num_heads=48, mlp_ratio=4.0)
QUICK_GIANT = dict(GIANT, depth=4)


def meta_rows(quick: bool) -> list[Row]:
    """Build and trace the giant config under ``torch.device("meta")``; prove no weight was allocated."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    import addin_studio as studio

    settings = QUICK_GIANT if quick else GIANT
    rss0, peak0 = rss_mb(), peak_rss_mb()
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = VisionTransformer(**settings)
    build_s = time.perf_counter() - t0
    x = torch.empty(1, 3, 224, 224, device="meta")
    t0 = time.perf_counter()
    graph = studio.trace(model, x)
    trace_s = time.perf_counter() - t0
    params = list(model.parameters())
    if not all(p.is_meta for p in params):
        raise AssertionError("a parameter of the meta model was materialized")
    n_params = sum(p.numel() for p in params)
    gb = n_params * 4 / 1e9
    growth = max(peak_rss_mb() - peak0, rss_mb() - rss0, 0.0)
    head = graph["head"]
    what = (
        f"depth {settings['depth']}, width {settings['embed_dim']}: {n_params / 1e9:.2f} B params "
        f"({gb:.0f} GB fp32), {len(graph)} modules, head output {head.output_shape}"
    )
    return [
        Row(
            "trace on meta: ViT-22B config (time)",
            trace_s * 1e3,
            None,
            "ms",
            detail=f"{what}; building it on meta took {build_s * 1e3:.0f} ms",
            source=SOURCE,
        ),
        Row(
            "trace on meta: RSS growth (no weights allocated)",
            growth,
            None,
            "MB",
            detail=f"all {len(params)} parameters stay on meta; materialized they would need "
            f"{gb * 1e3:,.0f} MB",
            source=SOURCE,
        ),
    ]


def torchinfo_rows(quick: bool) -> list[Row]:
    import torch
    from torchinfo import summary

    import addin_studio as studio

    n = 1 if quick else 11
    model = vit("vit_base_patch16_224").eval()
    x = torch.randn(1, 3, 224, 224)
    graph = studio.trace(model, x)
    stats = summary(model, input_data=x, verbose=0, cache_forward_pass=False)
    if graph.num_params != stats.total_params:
        raise AssertionError(f"trace counts {graph.num_params} parameters, torchinfo {stats.total_params}")
    times = interleave(
        {
            "ours": lambda: studio.trace(model, x),
            "torchinfo": lambda: summary(model, input_data=x, verbose=0, cache_forward_pass=False),
            "bare forward": lambda: _no_grad_forward(model, x),
        },
        n=n,
        warmup=1,
    )
    fwd = median(times["bare forward"])
    extra = {k: (median(times[k]) - fwd) * 1e3 for k in ("ours", "torchinfo")}
    return [
        Row(
            "trace vit_base: ours / torchinfo summary",
            paired_ratio(times, "ours", "torchinfo"),
            1.0,
            detail=f"batch 1; {describe(times)}; beyond the bare forward: ours {extra['ours']:+.0f} ms, "
            f"torchinfo {extra['torchinfo']:+.0f} ms",
            source=SOURCE,
        )
    ]


def _no_grad_forward(model, x):
    import torch

    with torch.no_grad():
        return model(x)


def run(quick: bool = False) -> list[Row]:
    setup_torch()
    return meta_rows(quick) + torchinfo_rows(quick)  # meta first: its RSS high-water mark is clean


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print_rows(run(quick=parser.parse_args().quick))
