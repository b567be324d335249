"""LoRA: a low-rank update ``(alpha/r) * B @ A`` of a layer's weight, as an output hook or on the weight.

Two ways to place it, both written in the string at the layer's output point ``(layer){inout1}``:

- ``adapt_output`` (a forward hook): ``out + (alpha/r) * B(A(dropout(x)))``. The cheapest in training
  (rank-r products only) and the default; it needs the layer to be *called* (its hook must run) and its
  ``forward`` to be the plain ``F.linear``/``conv`` of its class.
- ``adapt_weight`` (a weight method): ``layer.weight`` reads ``W + (alpha/r) * B @ A`` wherever it is
  read — a layer whose parent reads its weight directly (``F.linear(x, qkv.weight)`` in BEiT, EVA-02,
  torchvision's Swin), a conv subclass with its own ``forward`` (timm's ``Conv2dSame``,
  ``ScaledStdConv2d``), ``nn.MultiheadAttention`` (``in_proj_weight``, and its ``out_proj``), or any
  named 2-D parameter (``param=``). Merged equals unmerged by construction.

``B`` is zeros and ``A`` Kaiming-uniform, so the layer is unchanged at attach. Layouts (``B @ A`` is
``[h, w]``): Linear ``[out, in]``; transformers ``Conv1D`` (GPT-2, weight ``[in, out]``) ``[out, in]``,
transposed onto the weight (PEFT's ``fan_in_fan_out``); ``nn.Embedding`` ``[dim, num]`` transposed, as
PEFT's ``lora_embedding_A [r, num]`` / ``lora_embedding_B [dim, r]``; convolutions use GIFt's "balanced"
factorization: the kernel ``[out, in/groups, k0, k1, ...]`` is seen as ``[out*k0, in/groups*k1*...]``
(Conv1d: ``[out, in/groups*k0]``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import AddinBase, PointInfo, weight_method
from .lora_peft import LoraPeft
from .registry import register_addin

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_HOOK_METHOD = "adapt_output"
WEIGHT_METHOD = "adapt_weight"


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections): ``y = x @ W + b`` with ``W`` stored ``[in, out]``.

    Recognised by its class name and layout, so the core never imports transformers.
    """
    cls = type(module)
    return (cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
            and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2
            and getattr(module, "nf", None) == module.weight.shape[1])


def _layout(module: nn.Module, param: str) -> tuple[int, int, bool]:
    """``(h, w, transposed)``: ``B @ A`` is ``[h, w]``; transposed when the weight is stored ``[w, h]``."""
    if param != "weight" or isinstance(module, nn.MultiheadAttention):
        weight = getattr(module, "_parameters", {}).get(param)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{type(module).__name__} has no parameter '{param}' for LoRA to adapt")
        if weight.dim() < 2:
            raise TypeError(f"LoRA adapts a matrix; '{param}' of {type(module).__name__} has shape "
                            f"{tuple(weight.shape)}")
        return weight.shape[0], math.prod(weight.shape[1:]), False
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, False
    if is_hf_conv1d(module):
        return module.weight.shape[1], module.weight.shape[0], True
    if isinstance(module, nn.Embedding):
        return module.embedding_dim, module.num_embeddings, True
    if isinstance(module, _CONV):
        out, in_per_group, *kernel = module.weight.shape
        if isinstance(module, nn.Conv1d):
            return out, in_per_group * kernel[0], False
        return out * kernel[0], in_per_group * math.prod(kernel[1:]), False
    raise TypeError(f"LoRA works on nn.Linear, nn.Conv1d/2d/3d, nn.Embedding, nn.MultiheadAttention and "
                    f"transformers Conv1D layers (or a named parameter with param=), not "
                    f"{type(module).__name__}")


def lora_shape(module: nn.Module, param: str = "weight") -> tuple[int, int]:
    """``(h, w)`` of the matrix LoRA factorizes for ``module``: ``B`` is ``[h, r]``, ``A`` is ``[r, w]``."""
    h, w, _ = _layout(module, param)
    return h, w


def default_param(module: nn.Module) -> str:
    """The parameter LoRA adapts on ``module``: ``in_proj_weight`` for MultiheadAttention, else ``weight``."""
    return "in_proj_weight" if isinstance(module, nn.MultiheadAttention) else "weight"


def hook_problem(module: nn.Module) -> str | None:
    """Why the output hook cannot be right on ``module`` (so ``adapt_weight`` is needed), or None."""
    name = type(module).__name__
    if isinstance(module, nn.MultiheadAttention):
        return "nn.MultiheadAttention computes with in_proj_weight; its output is not a plain tensor"
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return "it is the out_proj of an nn.MultiheadAttention, which reads its weight without calling it"
    if isinstance(module, nn.Linear):
        return None  # Linear subclasses (timm's Linear, ...) compute F.linear(x, weight, bias)
    for base in (nn.Embedding,) + _CONV:
        if isinstance(module, base):
            if type(module).forward is not base.forward:
                return (f"{name} has its own forward (it transforms its input or weight before the "
                        f"{base.__name__} computation), so an update added to the output would not match")
            return None
    if is_hf_conv1d(module):
        return None
    return f"{name} is not a layer the output hook knows"


def check_lora_target(module: nn.Module, path: str = "") -> None:
    """Raise a clear error if LoRA cannot be placed on ``module`` at all."""
    _layout(module, default_param(module))
    if isinstance(module, nn.MultiheadAttention) and not module._qkv_same_embed_dim:
        where = f" '{path}'" if path else ""
        raise TypeError(f"LoRA on nn.MultiheadAttention{where} needs equal query/key/value sizes "
                        f"(one in_proj_weight); adapt q_proj_weight/k_proj_weight/v_proj_weight with "
                        f"param=")


@register_addin
class LoRA(AddinBase):
    """Low-rank adaptation of a layer's weight.

    At the layer's output point, as an output hook (``adapt_output``) or on the weight itself
    (``adapt_weight``; see the module docstring for when each is right)::

        (LoRA.adapt_output, r=8, alpha=16): ...->(blocks[0:12].mlp.fc1){inout1}->...
        (LoRA.adapt_weight, r=8, alpha=16): ...->(blocks[0:12].attn.qkv){inout1}->...

    Settings: ``r`` (rank, default 8), ``alpha`` (scale numerator; default ``r``, i.e. a scale of 1 as
    in GIFt), ``dropout`` (on the LoRA branch's input, default 0; output hook only), ``param`` (the
    parameter ``adapt_weight`` adapts; default ``weight``, ``in_proj_weight`` on MultiheadAttention).
    Parameters: ``lora_A`` ``[r, w]`` and ``lora_B`` ``[h, r]``. ``merge(module)`` folds
    ``(alpha/r) * B @ A`` into the weight (``Attachment.merge``).
    """

    # LoRA rewrites the layer's output from its input; the generic ZhiJian methods make no sense here.
    adapt_input = None  # type: ignore[assignment]
    adapt_across_input = None  # type: ignore[assignment]
    adapt_across_output = None  # type: ignore[assignment]
    peft = LoraPeft()  # its Hugging Face PEFT form (addins/lora_peft.py)

    def __init__(self, point: PointInfo, r: int = 8, alpha: float | None = None, dropout: float = 0.0,
                 param: str | None = None, source_point: PointInfo | None = None) -> None:
        super().__init__()
        module = point.module
        if point.side != "post":
            raise ValueError(f"LoRA goes after its layer: write ({point.path}){{inout1}} with "
                             f"adapt_output or adapt_weight, not a point before it")
        if source_point is not None and (source_point.path, source_point.side) != (point.path, point.side):
            raise ValueError("LoRA is an {inout} add-in: its input is the layer's own input, so it "
                             "takes no separate {in} point")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
            raise ValueError(f"LoRA alpha must be a number, got {alpha!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")
        if param is not None and (not isinstance(param, str) or not param.isidentifier()):
            raise ValueError(f"LoRA param must be a parameter name, got {param!r}")
        if param is None:
            check_lora_target(module, point.path)
        self.param = param or default_param(module)
        h, w, self.transposed = _layout(module, self.param)
        weight = module._parameters[self.param]
        self.weight_shape = tuple(weight.shape)
        self.r = r
        self.alpha = float(r if alpha is None else alpha)
        self.dropout = float(dropout)
        self.scaling = self.alpha / r
        self.is_conv = isinstance(module, _CONV) and self.param == "weight"
        self.is_embedding = isinstance(module, nn.Embedding) and self.param == "weight"
        self.hook_problem = hook_problem(module) if self.param == default_param(module) else \
            f"param={self.param!r} is adapted on the weight"
        self.lora_A = nn.Parameter(torch.empty(r, w, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(h, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def extra_repr(self) -> str:
        param = "" if self.param == "weight" else f", param={self.param}"
        return (f"r={self.r}, alpha={self.alpha:g}, dropout={self.dropout:g}{param}, "
                f"A={tuple(self.lora_A.shape)}, B={tuple(self.lora_B.shape)}")

    def check_method(self, method: str) -> None:
        """Called by the engine at attach: refuse a method that could not be right here."""
        if method == _HOOK_METHOD and self.hook_problem:
            raise ValueError(f"the output hook cannot adapt this layer: {self.hook_problem}; use "
                             f"{WEIGHT_METHOD}, which adapts the weight wherever it is read")
        if method == WEIGHT_METHOD and self.dropout:
            raise ValueError("dropout acts on the LoRA branch's input, which adapt_weight does not "
                             "have: use adapt_output or dropout=0")

    def weight_param(self, module: nn.Module) -> str:
        """The parameter :meth:`adapt_weight` adapts."""
        return self.param

    def delta(self) -> torch.Tensor:
        """``(alpha/r) * B @ A`` in the shape of the adapted weight."""
        d = (self.lora_B @ self.lora_A).mul(self.scaling)
        if self.transposed:
            d = d.t()
        return d.reshape(self.weight_shape)

    def delta_weight(self, module: nn.Module | None = None) -> torch.Tensor:
        """The update in the weight's shape (``module`` is accepted for compatibility)."""
        return self.delta()

    def forward(self, x: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """The LoRA branch alone: ``(alpha/r) * B(A(dropout(x)))`` (``module`` is needed for convs)."""
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        if self.is_conv:
            if module is None:
                raise ValueError("a conv LoRA needs its base module to run")
            return module._conv_forward(x, self.delta(), None)
        h = self._embed(x, module) if self.is_embedding else F.linear(x, self.lora_A)
        if self.scaling != 1.0:
            h = h * self.scaling  # cheapest place for the scale: the rank-r tensor
        return F.linear(h, self.lora_B)

    def _embed(self, x: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        if module is None:
            return F.embedding(x, self.lora_A.t())
        return F.embedding(x, self.lora_A.t(), module.padding_idx, module.max_norm, module.norm_type,
                           module.scale_grad_by_freq, module.sparse)

    def adapt_output(self, module: nn.Module, inputs: tuple, outputs: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        if self.is_conv:
            return outputs + module._conv_forward(x, self.delta(), None)
        h = self._embed(x, module) if self.is_embedding else F.linear(x, self.lora_A)
        if outputs.dim() >= 2 and outputs.is_contiguous():
            # one fused kernel for "outputs + scaling * h @ B^T": every extra op costs a thread sync
            n = outputs.shape[-1]
            return torch.addmm(outputs.reshape(-1, n), h.reshape(-1, self.r), self.lora_B.t(),
                               alpha=self.scaling).view(outputs.shape)
        if self.scaling != 1.0:
            h = h * self.scaling
        return outputs + F.linear(h, self.lora_B)

    @weight_method()
    def adapt_weight(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        """The weight the layer computes with: ``W + (alpha/r) * B @ A``."""
        return weight + self.delta().to(weight.dtype)

    def merge(self, module: nn.Module) -> None:
        """Fold the update into the stored weight (the Attachment snapshots and restores it)."""
        weight = module._parameters[self.param]
        weight.add_(self.delta().to(weight.dtype))
