"""The zoo checker shared by ``tests/test_zoo.py`` and ``tests/test_zoo_round_two.py``.

:func:`run_zoo_model` takes one model (built from scratch, random weights) and its small input through
``strategies.lora_all(model, r=4, example_input=x)`` -> ``attach`` and asserts that it is:

1. identity at init: outputs exactly equal to the bare model's;
2. alive: one optimizer step moves every LoRA add-in and no base parameter (a LoRA whose hook never
   runs gets no gradient and would be caught here);
3. mergeable: with every ``lora_B`` set to random values, merged outputs equal unmerged outputs within
   1e-3 of the LoRA's own effect (tied weights — GPT-2's and T5's ``lm_head`` — need ``untie=True``;
   plain ``merge()`` refuses and names the tie);
4. exact to undo: ``unmerge()`` gives the unmerged outputs bit for bit, and ``detach()`` the bare model's
   state_dict, classes, hooks and ``requires_grad`` flags.

A zoo is a list of ``(id, build, make_input, tied, slow)``; :func:`report` prints each model's result and
time (``python tests/test_zoo.py [names]``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import pytest
import torch
from torch import nn

import addin_studio as studio


def tiny_wav2vec2() -> nn.Module:
    """A Wav2Vec2ForCTC from a small config: its positional conv is under ``parametrizations.weight_norm``
    (the zoo's and the parametrized-weight tests' model)."""
    import transformers

    cfg = transformers.Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        vocab_size=32,
    )
    return transformers.Wav2Vec2ForCTC(cfg)


#: (id, model builder, input builder, tied weights, slow)
Entry = tuple[str, Callable[[], nn.Module], Callable[[], Any], bool, bool]


def timm_model(name: str, **kw: Any) -> Callable[[], nn.Module]:
    """A builder of timm's ``name`` (random weights, 8 classes)."""

    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=8, **kw)

    return build


def tv_model(name: str, **kw: Any) -> Callable[[], nn.Module]:
    """A builder of torchvision's ``name`` (random weights); ``video.r3d_18``, ``segmentation.fcn_resnet50``
    for the submodules' models."""

    def build() -> nn.Module:
        import torchvision

        family, _, model = name.rpartition(".")
        where = getattr(torchvision.models, family) if family else torchvision.models
        return getattr(where, model)(weights=None, **kw)

    return build


def ids(*shape: int) -> torch.Tensor:
    """Token ids in ``[1, 64)`` (a fixed draw)."""
    return torch.randint(1, 64, shape, generator=torch.Generator().manual_seed(1))


def image(*shape: int) -> Callable[[], torch.Tensor]:
    """A builder of a fixed random tensor of ``shape``."""
    return lambda: torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def output(model: nn.Module, x: Any) -> torch.Tensor:
    """The model's main output tensor: a tensor, ``.logits``, a segmentation model's ``["out"]``, or the
    first element."""
    out = model(**x) if isinstance(x, dict) else model(x)
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and not hasattr(out, "logits") and "out" in out:
        return out["out"]  # torchvision segmentation models
    return out.logits if hasattr(out, "logits") else out[0]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_zoo_model(build: Callable[[], nn.Module], make_input: Callable[[], Any], tied: bool) -> dict:
    """Run the four checks on one model; returns numbers for the report (asserts on failure)."""
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():  # zero-initialized heads and gains would starve every LoRA of gradient
        for param in model.parameters():
            if not param.any():
                param.normal_(0, 0.02)
    x = make_input()
    classes = {n: type(m) for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = state(model)
    with torch.no_grad():
        bare = output(model, x)

    cfg = studio.strategies.lora_all(model, r=4, example_input=x)
    att = studio.attach(model, cfg, example_input=x)
    weight = sum(p.method == "adapt_weight" for p in cfg.placements)
    # 1. identity at init
    with torch.no_grad():
        assert torch.equal(output(model, x), bare)
    # 2. one step moves every LoRA and no base parameter
    lora_before = {n: p.detach().clone() for n, p in att.addins.named_parameters()}
    opt = torch.optim.SGD(att.parameters(), lr=0.1)
    output(model, x).float().square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    after = dict(att.addins.named_parameters())
    dead = [
        key
        for key in att.addins
        if all(torch.equal(lora_before[f"{key}.{n}"], after[f"{key}.{n}"]) for n in ("lora_A", "lora_B"))
    ]
    assert not dead, f"LoRA add-ins that did not move: {dead}"
    base = {k: v for k, v in model.state_dict().items() if not k.startswith(att._child_name + ".")}
    assert all(torch.equal(before[k], v) for k, v in base.items()), "a base parameter moved"
    # 3. merged == unmerged within 1e-3 of the LoRA's effect
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for addin in att.addins.values():
            addin.lora_B.copy_(torch.randn(addin.lora_B.shape, generator=gen) * 0.05)
        unmerged = output(model, x)
        effect = (unmerged - bare).abs().max().item()
        assert effect > 0
        if tied:
            with pytest.raises(ValueError, match="tied weights"):
                att.merge()
        att.merge(untie=tied)
        merged = output(model, x)
        diff = (merged - unmerged).abs().max().item()
        assert diff <= 1e-3 * effect, f"merged differs by {diff:.3g}, LoRA effect {effect:.3g}"
        # 4. exact undo
        att.unmerge()
        assert torch.equal(output(model, x), unmerged)
    att.detach()
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.state_dict().keys() == before.keys()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(output(model, x), bare)
    return {"placements": len(cfg.placements), "adapt_weight": weight, "effect": effect, "diff": diff}


def params(zoo: Sequence[Entry]) -> list:
    """``pytest.param`` per entry, id'd by name, marked slow where it says so."""
    return [
        pytest.param(n, b, i, t, id=n, marks=[pytest.mark.slow] if slow else []) for n, b, i, t, slow in zoo
    ]


def report(zoo: Sequence[Entry], names: Sequence[str] = ()) -> None:
    """Print each model's result and time (those whose id contains one of ``names``; all without)."""
    torch.set_num_threads(1)
    total = time.perf_counter()
    for name, build, make_input, tied, _ in zoo:
        if names and not any(a in name for a in names):
            continue
        start = time.perf_counter()
        try:
            r = run_zoo_model(build, make_input, tied)
            result = (
                f"ok  {r['placements']:3d} LoRAs ({r['adapt_weight']} adapt_weight), "
                f"merge diff {r['diff']:.1e} / effect {r['effect']:.1e}"
            )
        except Exception as exc:  # report every model
            result = f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
        print(f"{name:28s} {time.perf_counter() - start:5.1f}s  {result}", flush=True)
    print(f"total {time.perf_counter() - total:.1f}s")
