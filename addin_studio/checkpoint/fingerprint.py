"""A model's fingerprint (root class, every base parameter's name and shape) and the checks against it."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ..config import Config
from ..engine import AddinDict


def addin_child(model: nn.Module) -> str | None:
    """The name under which an attachment registered its add-ins on ``model``, if any."""
    for name, child in model.named_children():
        if isinstance(child, AddinDict):
            return name
    return None


def base_params(model: nn.Module, skip: str | None = None) -> list[tuple[str, nn.Parameter]]:
    """Named base parameters, without the add-ins of any attachment (stacked attachments each
    register an AddinDict child) nor those registered under ``skip``."""
    skips = {f"{name}." for name, child in model.named_children() if isinstance(child, AddinDict)}
    if skip:
        skips.add(f"{skip}.")
    prefixes = tuple(skips)
    return [(n, p) for n, p in model.named_parameters() if not n.startswith(prefixes)]


def root_class(model: nn.Module) -> str:
    """The model's class name; FSDP2's ``fully_shard`` subclasses it as ``FSDP<Name>``, which is the same
    model."""
    cls = type(model)
    if any(b.__name__ == "FSDPModule" for b in cls.__bases__):
        cls = next(b for b in cls.__bases__ if b.__name__ != "FSDPModule")
    return cls.__name__


def fingerprint(model: nn.Module, skip: str | None = None) -> dict[str, Any]:
    """``{"root": class name, "params": [[name, shape], ...]}`` of the base model."""
    return {"root": root_class(model), "params": [[n, list(p.shape)] for n, p in base_params(model, skip)]}


def check_fingerprint(model: nn.Module, expected: Mapping[str, Any], source: str) -> None:
    """Raise ValueError naming the first module/shape where ``model`` differs from the checkpoint's."""
    if not isinstance(expected, Mapping) or "params" not in expected:
        raise ValueError(f"{source}: the checkpoint has no model fingerprint")
    root = root_class(model)
    if expected.get("root") != root:
        raise ValueError(f"{source} was saved for a {expected.get('root')}, not a {root}")
    have = {n: list(p.shape) for n, p in base_params(model, addin_child(model))}
    want = {n: list(s) for n, s in expected["params"]}
    for name, shape in want.items():
        if name not in have:
            raise ValueError(
                f"{source} does not fit this {root}: it has no parameter '{name}' "
                f"(module '{name.rpartition('.')[0]}'), which the saved model had"
            )
        if have[name] != shape:
            raise ValueError(
                f"{source} does not fit this {root}: parameter '{name}' has shape "
                f"{tuple(have[name])} here but {tuple(shape)} in the checkpoint"
            )
    extra = [n for n in have if n not in want]
    if extra:
        raise ValueError(
            f"{source} does not fit this {root}: parameter '{extra[0]}' is not in the "
            f"model the checkpoint was saved from"
        )


def check_touched(model: nn.Module, cfg: Config, expected: Mapping[str, Any], source: str) -> None:
    """The non-strict check: only modules the placements use and kept-trainable weights."""
    want = {n: list(s) for n, s in expected.get("params", [])}
    have = {n: list(p.shape) for n, p in base_params(model, addin_child(model))}
    modules = {p.target.module for p in cfg.placements} | {p.source.module for p in cfg.placements}
    for name, shape in want.items():
        owner = name.rpartition(".")[0]
        if owner in modules and have.get(name) != shape:
            got = "missing" if name not in have else f"shape {tuple(have[name])}"
            raise ValueError(
                f"{source} does not fit this model: module '{owner}' parameter "
                f"'{name}' is {got} here but {tuple(shape)} in the checkpoint"
            )
