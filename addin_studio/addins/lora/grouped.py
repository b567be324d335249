"""LoRA on a grouped convolution in PEFT's layout (``layout=peft`` on ``nn.Conv1d/2d/3d`` with
``groups > 1``).

PEFT builds it as two convolutions: ``A`` a *dense* conv ``in_channels -> r`` with the layer's kernel,
stride and padding (weight ``[r, in_channels, *kernel]``), then ``B`` a 1x1 conv ``r -> out_channels``
with the layer's ``groups`` (weight ``[out_channels, r/groups, 1, ...]``; ``r`` must be divisible by
``groups``). The branch ``B(A(x))`` mixes input channels across groups, so it is not an update of the
grouped layer's weight ``[out, in/groups, *kernel]``: it runs as an output hook only and cannot be merged
(PEFT refuses that merge too). Ours holds ``lora_A`` as ``[r, in_channels * prod(kernel)]`` and ``lora_B``
as ``[out_channels, r/groups]``.

DoRA needs a weight norm; PEFT takes it of ``W + scaling * (B viewed [-1, r] @ A viewed [r, -1])``
reshaped to ``W``'s shape (:func:`peft_dora_delta`). That matrix is not the branch's update (there is no
such weight); we reproduce it so that equal weights give PEFT's outputs. The norm is detached, and at
attach ``B`` is zero, so the magnitude starts as ``||W||`` per output channel either way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_CONV_FN = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def is_grouped_peft(module: nn.Module, layout: str, param: str = "weight") -> bool:
    """Whether LoRA on ``module`` takes PEFT's grouped-conv form."""
    return (
        layout == "peft" and param == "weight" and isinstance(module, tuple(_CONV_FN)) and module.groups != 1
    )


def check_grouped(module: nn.Module, r: int, init: str) -> None:
    """Refuse what PEFT's grouped conv LoRA cannot be (``ValueError`` naming the setting)."""
    if r % module.groups:
        raise ValueError(
            f"LoRA layout=peft on a {type(module).__name__} with groups={module.groups} needs "
            f"a rank divisible by the groups (PEFT's B is a grouped 1x1 conv), got r={r}"
        )
    if init not in ("kaiming", "gaussian"):
        raise ValueError(
            f"LoRA init={init} needs the update as a weight, which a grouped conv LoRA in "
            f"PEFT's layout does not have (groups={module.groups}): "
            f"use init=kaiming or gaussian"
        )
    if module.padding_mode != "zeros":
        raise ValueError(
            f"LoRA layout=peft on a grouped convolution zero-pads its A conv; this layer has "
            f"padding_mode={module.padding_mode!r}"
        )


def grouped_shapes(module: nn.Module, r: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(A shape, B shape)``: ``[r, in_channels * prod(kernel)]`` and ``[out_channels, r/groups]``."""
    return (r, module.in_channels * math.prod(module.kernel_size)), (module.out_channels, r // module.groups)


def grouped_branch(
    module: nn.Module, lora_A: torch.Tensor, lora_B: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """``B(A(x))`` without scaling: the dense ``A`` conv, then the grouped 1x1 ``B`` conv."""
    conv = next(fn for cls, fn in _CONV_FN.items() if isinstance(module, cls))
    r = lora_A.shape[0]
    ones = (1,) * len(module.kernel_size)
    h = conv(
        x,
        lora_A.view(r, module.in_channels, *module.kernel_size),
        None,
        module.stride,
        module.padding,
        module.dilation,
    )
    return conv(h, lora_B.view(lora_B.shape[0], lora_B.shape[1], *ones), None, 1, 0, 1, module.groups)


def peft_dora_delta(
    lora_A: torch.Tensor, lora_B: torch.Tensor, weight_shape: tuple[int, ...], scaling: float
) -> torch.Tensor:
    """The matrix PEFT adds to ``W`` for DoRA's norm on a grouped conv (see the module docstring)."""
    r = lora_A.shape[0]
    return (lora_B.reshape(-1, r) @ lora_A.reshape(r, -1)).reshape(weight_shape) * scaling
