"""Ready-made strategies: LoRA-all (GIFt), LoRA on PEFT-style target modules, BitFit, head-only, full."""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from torch import nn

from ..config import Config
from .capabilities import ModuleInfo, ParamCap, Strategy, place

LORA_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _lora_settings(r: int, alpha: float | None, dropout: float) -> dict:
    settings: dict = {"r": r}
    if alpha is not None:
        settings["alpha"] = alpha
    if dropout:
        settings["dropout"] = dropout
    return settings


def _is_lora_layer(info: ModuleInfo) -> bool:
    # nn.MultiheadAttention never calls its out_proj, so a hook there would not run
    return isinstance(info.module, LORA_LAYERS) and \
        not isinstance(info.module, nn.modules.linear.NonDynamicallyQuantizableLinear)


def lora_all_strategy(r: int = 3, alpha: float | None = None, dropout: float = 0.0,
                      train_bias: bool = False) -> Strategy:
    """GIFt's ``LoRAAllStrategy``: LoRA on every Linear and Conv1d/2d/3d; everything else frozen."""
    train = (lambda info: [f"{info.path}.bias"] if getattr(info.module, "bias", None) is not None
             else []) if train_bias else None
    return Strategy(name="lora_all").register_module_cap(
        _is_lora_layer, place("LoRA", train=train, **_lora_settings(r, alpha, dropout)))


def lora_all(model: nn.Module, r: int = 3, alpha: float | None = None, dropout: float = 0.0,
             train_bias: bool = False) -> Config:
    """LoRA of rank ``r`` on every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` of ``model`` (GIFt's LoRA-all).

    ``alpha`` defaults to ``r`` (scale 1, as GIFt). All other parameters are frozen, biases too unless
    ``train_bias``. On torchvision's resnet18 with ``r=3`` this trains 75,063 parameters.
    """
    return lora_all_strategy(r, alpha, dropout, train_bias)(model)


def _target_check(targets: str | Sequence[str]):
    if isinstance(targets, str):
        try:
            regex = re.compile(targets)
        except re.error as exc:
            raise ValueError(f"targets {targets!r} is not a valid regular expression: {exc}") from None
        return lambda path: regex.fullmatch(path) is not None
    names = list(targets)
    if not names or not all(isinstance(t, str) and t for t in names):
        raise ValueError(f"targets must be a regex string or a non-empty list of module names, got {targets!r}")
    return lambda path: any(path == t or path.endswith("." + t) for t in names)


def lora(model: nn.Module, targets: str | Sequence[str], r: int = 8, alpha: float | None = 16,
         dropout: float = 0.0, trainable: Iterable[str] = ()) -> Config:
    """LoRA on the modules PEFT's ``target_modules`` would pick.

    ``targets``: a list of names matched against the end of each module path (``"qkv"`` matches
    ``blocks.0.attn.qkv``), or one string read as a regular expression that must match a whole path.
    ``trainable``: extra parameter patterns kept trainable (e.g. ``["head"]``). A target that matches
    no Linear/Conv layer is a ValueError naming it.
    """
    matches = _target_check(targets)
    strategy = Strategy(name="lora").register_module_cap(
        lambda info: matches(info.path) and _is_lora_layer(info),
        place("LoRA", **_lora_settings(r, alpha, dropout)))
    cfg = strategy(model)
    if not cfg.placements:
        layers = [n for n, m in model.named_modules() if isinstance(m, LORA_LAYERS)][:6]
        raise ValueError(f"targets {targets!r} match no Linear/Conv layer of {type(model).__name__} "
                         f"(its layers include: {', '.join(layers)})")
    if not isinstance(targets, str):
        hit = {p.target.module for p in cfg.placements}
        for t in targets:
            if not any(h == t or h.endswith("." + t) for h in hit):
                raise ValueError(f"target {t!r} matches no Linear/Conv layer of {type(model).__name__}")
    return cfg.with_trainable(list(cfg.trainable) + list(trainable))


def bitfit(model: nn.Module) -> Config:
    """BitFit: only the biases train (``trainable(*.bias)``)."""
    strategy = Strategy(name="bitfit", param_caps=[
        ParamCap(lambda p: p.name == "bias", True, pattern="*.bias")])
    cfg = strategy(model)
    if not cfg.trainable:
        raise ValueError(f"{type(model).__name__} has no bias parameters for BitFit to train")
    return cfg


def _default_head(model: nn.Module) -> str:
    getter = getattr(model, "get_classifier", None)  # timm models name their classifier
    if callable(getter):
        head = getter()
        for name, module in model.named_modules():
            if module is head and name:
                return name
    for name in ("head", "fc", "classifier", "heads", "last_linear"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
            return name
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    raise ValueError(f"cannot tell the head of {type(model).__name__}; pass head='<module path>'")


def head_only(model: nn.Module, head: str | None = None) -> Config:
    """Only the classifier head trains (``trainable(head)``); ``head`` defaults to timm's
    ``get_classifier()``, then ``head``/``fc``/``classifier``, then the last Linear layer."""
    path = head or _default_head(model)
    modules = dict(model.named_modules())
    if path not in modules:
        raise ValueError(f"no module {path!r} in {type(model).__name__} to use as the head")
    prefix = path + "."
    strategy = Strategy(name="head_only", param_caps=[
        ParamCap(lambda p: p.path.startswith(prefix), True, pattern=path)])
    cfg = strategy(model)
    if not cfg.trainable:
        raise ValueError(f"head {path!r} has no parameters")
    return cfg


def full(model: nn.Module) -> Config:
    """Full fine-tuning: every parameter trains (``trainable(*)``)."""
    strategy = Strategy(name="full", param_caps=[ParamCap(lambda p: True, True, pattern="*")])
    return strategy(model)
