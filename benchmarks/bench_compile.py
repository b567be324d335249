"""torch.compile on an attached model: compiled vs eager time of a forward pass and of a training step.

The model is a ViT (timm's VisionTransformer, ViT-Tiny width) with LoRA on every block's ``qkv`` and a
user bottleneck add-in (``MLPAddin``) across each block's MLP. Rows are ratios compiled/eager measured
interleaved in one run (< 1 means compiling pays off), plus the number of graph breaks dynamo reports
for the attached model (target 0) and the largest output difference compiled vs eager.

``python -m benchmarks.bench_compile`` prints the table; ``quick=True`` uses a tiny model and the
``eager`` backend (dynamo tracing only, no code generation) so that the smoke test stays fast.
"""

from __future__ import annotations

import copy
import time

from .common import Row, describe, interleave, paired_ratio, print_rows, setup_torch

SOURCE = "benchmarks/bench_compile.py"


def _model(quick: bool):
    import torch
    from timm.models.vision_transformer import VisionTransformer

    import addin_studio as studio
    from addin_studio.examples import MLPAddin

    size, depth, dim, batch = (32, 2, 64, 4) if quick else (96, 6, 192, 8)
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=size,
        patch_size=16 if not quick else 8,
        embed_dim=dim,
        depth=depth,
        num_heads=3 if not quick else 2,
        num_classes=10,
    )
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    config = (
        f"(LoRA.adapt_output, r=8): ...->(blocks[0:{depth}].attn.qkv){{inout1}}->...\n"
        f"(MLPAddin.adapt_across_output, reduction_dim=16): "
        f"...->(blocks[0:{depth}].norm2){{in1}}->...->(blocks[0:{depth}].mlp){{out1}}->..."
    )
    att = studio.attach(model, config, addins={"MLPAddin": MLPAddin}, example_input=x)
    with torch.no_grad():  # a trained-looking LoRA (B starts at zero)
        for name, p in att.addins.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.02)
    return model, x, y


def run(quick: bool = False) -> list[Row]:
    import torch
    import torch._dynamo as dynamo

    setup_torch()
    backend = "eager" if quick else "inductor"
    n = 3 if quick else 15
    model, x, y = _model(quick)
    label = "tiny ViT" if quick else "ViT-Tiny width, depth 6, 96px, batch 8"

    dynamo.reset()
    explained = dynamo.explain(model)(x)
    breaks = Row(
        "compile: graph breaks in an attached ViT",
        float(explained.graph_break_count),
        0,
        "breaks",
        detail=f"{explained.graph_count} graph(s); LoRA on qkv + MLPAddin across each MLP",
        source=SOURCE,
    )
    dynamo.reset()

    # forward (inference)
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        t0 = time.perf_counter()
        out_c = compiled(x)
        compile_fwd_s = time.perf_counter() - t0
        out_e = model(x)
        diff = float((out_c - out_e).abs().max())

        def eager_fwd():
            model(x)

        def compiled_fwd():
            compiled(x)

        fwd = interleave({"eager": eager_fwd, "compiled": compiled_fwd}, n=n, warmup=1)

    # training step (forward + backward + SGD step) on two identical copies
    train_e, train_c = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    compiled_train = torch.compile(train_c, backend=backend)
    opts = {
        name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        for name, m in (("eager", train_e), ("compiled", train_c))
    }

    def step(m, opt):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()

    t0 = time.perf_counter()
    step(compiled_train, opts["compiled"])
    compile_train_s = time.perf_counter() - t0
    step(train_e, opts["eager"])  # keep the two copies in step
    train = interleave(
        {
            "eager": lambda: step(train_e, opts["eager"]),
            "compiled": lambda: step(compiled_train, opts["compiled"]),
        },
        n=n,
        warmup=1,
    )
    param_diff = max(
        float((a - b).detach().abs().max()) for a, b in zip(train_e.parameters(), train_c.parameters())
    )
    dynamo.reset()

    return [
        breaks,
        Row(
            f"compile: forward compiled/eager ({backend})",
            paired_ratio(fwd, "compiled", "eager"),
            None,
            detail=f"{label}; {describe(fwd)}; first call (compiling) {compile_fwd_s:.1f} s; "
            f"max |diff| {diff:.1e}",
            source=SOURCE,
            extra={"max_abs_diff": diff},
        ),
        Row(
            f"compile: train step compiled/eager ({backend})",
            paired_ratio(train, "compiled", "eager"),
            None,
            detail=f"{label}; {describe(train)}; first step (compiling) {compile_train_s:.1f} s; "
            f"params after {n + 2} steps max |diff| {param_diff:.1e}",
            source=SOURCE,
            extra={"max_param_diff": param_diff},
        ),
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print_rows(run(quick=parser.parse_args().quick))
