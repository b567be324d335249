"""PEFT's ``bias`` field (``"none"``, ``"all"``, ``"lora_only"``): trained base biases in an adapter
directory.

With ``bias="all"`` PEFT trains and saves every bias of the model, with ``"lora_only"`` the biases of the
layers it adapts (saved as ``<layer>.base_layer.bias``). We load them as kept-trainable base biases (the
config's ``trainable`` list), each checked like any tensor a file may write into the base (shape, floating
dtype, finite), and write them back the same way when the kept-trainable parameters are exactly such a set.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from .validate import check_tensor

_BASE_LAYER = ".base_layer."


def bias_mode(config: Mapping, source: str) -> str:
    """The config's ``bias`` field, checked: ``"none"``, ``"all"`` or ``"<type>_only"``."""
    mode = config.get("bias") or "none"
    if mode not in ("none", "all") and not mode.endswith("_only"):
        raise ValueError(f"{source}: field 'bias' must be 'none', 'all' or 'lora_only', got {mode!r}")
    return mode


def is_bias(name: str) -> bool:
    """Whether a PEFT tensor name (model-relative) is a layer's bias as ``bias="all"`` saves it."""
    return name == "bias" or name.endswith(".bias")


def base_name(name: str) -> str:
    """PEFT's ``<layer>.base_layer.bias`` -> our ``<layer>.bias``."""
    return name.replace(_BASE_LAYER, ".")


def read_biases(
    found: Mapping[str, torch.Tensor],
    mode: str,
    adapted: Iterable[str],
    params: Mapping[str, nn.Parameter],
    weights_path: str,
    lead: str,
    allow_nonfinite: bool,
) -> dict[str, torch.Tensor]:
    """``{our parameter name: tensor}`` for the bias tensors of a ``bias="all"`` / ``"lora_only"``
    adapter (``found``: PEFT names). ``lora_only``: each must belong to an ``adapted`` layer."""
    adapted = set(adapted)
    out: dict[str, torch.Tensor] = {}
    for peft_name, t in found.items():
        name = base_name(peft_name)
        key = lead + peft_name
        if name not in params:
            raise ValueError(
                f"{weights_path}: tensor '{key}' is a bias (bias={mode!r}) of a layer this "
                f"model does not have ('{name}')"
            )
        layer = name.rpartition(".")[0]
        if mode != "all" and layer not in adapted:
            raise ValueError(
                f"{weights_path}: tensor '{key}' is the bias of '{layer}', which the adapter "
                f"does not adapt; bias={mode!r} holds only the adapted layers' biases"
            )
        if name in out:
            raise ValueError(f"{weights_path}: the bias '{name}' is saved twice")
        check_tensor(t, params[name], key, weights_path, allow_nonfinite)
        out[name] = t
    return out


def export_biases(
    keep: set[str], adapted: Iterable[str], base: Mapping[str, torch.Tensor], whole: Iterable[str]
) -> tuple[str, dict[str, torch.Tensor]]:
    """PEFT's ``bias`` value and tensors for the kept-trainable ``keep`` names that are biases of no
    ``whole`` module (those go to ``modules_to_save``): ``"none"`` when there are none, ``"lora_only"``
    when they are exactly the adapted layers' biases, ``"all"`` when every bias; else ``ValueError``."""
    whole = tuple(f"{m}." for m in whole)
    loose = {n for n in keep if not n.startswith(whole)}
    if not loose:
        return "none", {}
    adapted = set(adapted)
    every = {n for n in base if is_bias(n) and not n.startswith(whole)}
    of_adapted = {n for n in every if n.rpartition(".")[0] in adapted}
    if loose == of_adapted:
        mode = "lora_only"
    elif loose == every:
        mode = "all"
    elif loose < of_adapted:
        raise ValueError(
            "PEFT's bias='lora_only' trains the bias of every adapted layer; the "
            f"kept-trainable biases leave out '{sorted(of_adapted - loose)[0]}' (keep all of "
            f"them trainable, or none)"
        )
    else:
        sample = sorted(loose - every or loose - of_adapted)[0]
        raise ValueError(
            f"PEFT keeps base weights trainable as whole modules (modules_to_save) or as biases "
            f"(bias='lora_only': those of the adapted layers, bias='all': every bias); the "
            f"kept-trainable '{sample}' is neither"
        )
    tensors = {}
    for n in sorted(loose):
        layer = n.rpartition(".")[0]
        tensors[f"{layer}{_BASE_LAYER}bias" if layer in adapted else n] = base[n]
    return mode, tensors
