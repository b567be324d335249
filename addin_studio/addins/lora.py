"""LoRA: a low-rank update of a Linear or Conv layer's weight, run as a hook after the layer.

``out + (alpha / r) * B(A(dropout(x)))`` with ``B`` zeros and ``A`` Kaiming-uniform, so the layer's
output is unchanged at attach. On convolutions the update uses GIFt's "balanced" factorization: the
kernel ``[out, in/groups, k0, k1, ...]`` is seen as a matrix ``[out*k0, in/groups*k1*...]`` (Conv1d:
``[out, in/groups*k0]``), ``B`` is ``[h, r]``, ``A`` is ``[r, w]`` and ``B @ A`` is reshaped to the kernel.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from .base import AddinBase, PointInfo
from .lora_peft import LoraPeft
from .registry import register_addin

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def lora_shape(module: nn.Module) -> tuple[int, int]:
    """``(h, w)`` of the matrix LoRA factorizes for ``module``: ``B`` is ``[h, r]``, ``A`` is ``[r, w]``."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, _CONV):
        out, in_per_group, *kernel = module.weight.shape
        if isinstance(module, nn.Conv1d):
            return out, in_per_group * kernel[0]
        return out * kernel[0], in_per_group * math.prod(kernel[1:])
    raise TypeError(f"LoRA works on nn.Linear and nn.Conv1d/2d/3d layers, not {type(module).__name__}")


def check_lora_target(module: nn.Module, path: str = "") -> None:
    """Raise a clear error if LoRA cannot be placed on ``module``."""
    where = f" '{path}'" if path else ""
    # MultiheadAttention reads out_proj.weight directly and never calls out_proj: a hook would not run
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        raise TypeError(f"module{where} is the out_proj of an nn.MultiheadAttention, which uses its weight "
                        f"without calling it, so a LoRA hook there would never run")
    if not isinstance(module, (nn.Linear,) + _CONV):
        raise TypeError(f"LoRA works on nn.Linear and nn.Conv1d/2d/3d layers; module{where} is a "
                        f"{type(module).__name__}")


@register_addin
class LoRA(AddinBase):
    """Low-rank adaptation of the ``nn.Linear`` or ``nn.Conv1d/2d/3d`` layer it is placed after.

    Place it at the layer's output with ``adapt_output``::

        (LoRA.adapt_output, r=8, alpha=16): ...->(blocks[0:12].attn.qkv){inout1}->...

    Settings: ``r`` (rank, default 8), ``alpha`` (scale numerator; default ``r``, i.e. a scale of 1 as
    in GIFt), ``dropout`` (on the LoRA branch's input, default 0). Parameters: ``lora_A`` ``[r, w]`` and
    ``lora_B`` ``[h, r]`` (for Linear, ``h = out_features`` and ``w = in_features``, as in PEFT).
    ``merge(module)`` folds ``(alpha/r) * B @ A`` into the layer's weight (``Attachment.merge``).
    """

    # LoRA rewrites the layer's output from its input; the generic ZhiJian methods make no sense here.
    adapt_input = None  # type: ignore[assignment]
    adapt_across_input = None  # type: ignore[assignment]
    adapt_across_output = None  # type: ignore[assignment]
    peft = LoraPeft()  # its Hugging Face PEFT form (addins/lora_peft.py)

    def __init__(self, point: PointInfo, r: int = 8, alpha: float | None = None, dropout: float = 0.0,
                 source_point: PointInfo | None = None) -> None:
        super().__init__()
        module = point.module
        check_lora_target(module, point.path)
        if point.side != "post":
            raise ValueError(f"LoRA goes after its layer: write ({point.path}){{inout1}} with "
                             f"adapt_output, not a point before it")
        if source_point is not None and (source_point.path, source_point.side) != (point.path, point.side):
            raise ValueError("LoRA is an {inout} add-in: its input is the layer's own input, so it "
                             "takes no separate {in} point")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
            raise ValueError(f"LoRA alpha must be a number, got {alpha!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")
        h, w = lora_shape(module)
        weight = module.weight
        self.r = r
        self.alpha = float(r if alpha is None else alpha)
        self.dropout = float(dropout)
        self.scaling = self.alpha / r
        self.is_conv = isinstance(module, _CONV)
        self.lora_A = nn.Parameter(torch.empty(r, w, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(h, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def extra_repr(self) -> str:
        return (f"r={self.r}, alpha={self.alpha:g}, dropout={self.dropout:g}, "
                f"A={tuple(self.lora_A.shape)}, B={tuple(self.lora_B.shape)}")

    def delta_weight(self, module: nn.Module) -> torch.Tensor:
        """``(alpha/r) * B @ A`` in the shape of ``module.weight``."""
        return (self.lora_B @ self.lora_A).mul(self.scaling).view(module.weight.shape)

    def forward(self, x: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """The LoRA branch alone: ``(alpha/r) * B(A(dropout(x)))`` (``module`` is needed for convs)."""
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        if self.is_conv:
            if module is None:
                raise ValueError("a conv LoRA needs its base module to run")
            return module._conv_forward(x, self.delta_weight(module), None)
        h = F.linear(x, self.lora_A)
        if self.scaling != 1.0:
            h = h * self.scaling  # cheapest place for the scale: the rank-r tensor
        return F.linear(h, self.lora_B)

    def adapt_output(self, module: nn.Module, inputs: tuple, outputs: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        if self.is_conv:
            return outputs + module._conv_forward(x, self.delta_weight(module), None)
        h = F.linear(x, self.lora_A)
        if outputs.dim() >= 2 and outputs.is_contiguous():
            # one fused kernel for "outputs + scaling * h @ B^T": every extra op costs a thread sync
            n = outputs.shape[-1]
            return torch.addmm(outputs.reshape(-1, n), h.reshape(-1, self.r), self.lora_B.t(),
                               alpha=self.scaling).view(outputs.shape)
        if self.scaling != 1.0:
            h = h * self.scaling
        return outputs + F.linear(h, self.lora_B)

    def merge(self, module: nn.Module) -> None:
        """Fold the update into ``module.weight`` (the Attachment snapshots and restores it)."""
        module.weight.add_(self.delta_weight(module).to(module.weight.dtype))
