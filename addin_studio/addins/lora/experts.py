"""LoRA on fused mixture-of-experts weights: one low-rank update per expert, as PEFT's ``target_parameters``.

transformers 5 stores a mixture-of-experts layer's experts as 3-D parameters of one module (Mixtral's,
Qwen2-MoE's ``experts.gate_up_proj [E, 2I, H]`` and ``experts.down_proj [E, H, I]``), not as Linear layers.
``LoRA.adapt_weight`` with ``param=`` on such a parameter adapts every expert ``e`` with its own
``scaling * B_e @ A_e``, computed exactly as PEFT's ``lora.ParamWrapper`` does, with PEFT's tensors:

- expert ``e``'s matrix is ``W[e]`` (``[out, in]``), or ``W[e].T`` when the module says
  ``is_transposed = True`` (transformers' experts stored ``[E, in, out]``);
- ``lora_A`` is ``[E*r, in]``, expert-major: ``A_e = lora_A[e*r:(e+1)*r]``;
- ``lora_B`` is ``[out, r*E]``, expert-minor: ``B_e = lora_B[:, e::E]`` (PEFT reshapes it ``[out, r, E]``);
- ``A`` starts Kaiming-uniform over ``in`` (or ``N(0, 1/r)`` with ``init=gaussian``), ``B`` zero.

So the tensors go to PEFT and back unchanged (``addins/lora/peft.py``). Plain LoRA only (``rslora`` is
allowed): PEFT's ``ParamWrapper`` refuses DoRA, a LoRA bias, VeLoRA, KaSA and dropout too.
"""

from __future__ import annotations

import torch
from torch import nn

from .layout import CONVS, is_hf_conv1d

#: the inits an expert LoRA may start from (PEFT's ParamWrapper: the base-weight inits need a 2-D weight)
EXPERT_INITS = ("kaiming", "gaussian")


def is_expert_param(module: nn.Module, param: str) -> bool:
    """Whether ``module.<param>`` is a stack of expert matrices LoRA adapts one expert at a time: a 3-D
    parameter named with ``param=`` on a module that is not a convolution's own ``weight``."""
    weight = getattr(module, "_parameters", {}).get(param)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        return False
    return not (param == "weight" and (isinstance(module, CONVS) or is_hf_conv1d(module)))


def expert_dims(module: nn.Module, weight: torch.Tensor) -> tuple[int, int, int]:
    """``(experts, out, in)`` of a 3-D expert parameter: ``[E, out, in]``, or ``[E, in, out]`` when the
    module's ``is_transposed`` is true (PEFT reads the same attribute)."""
    experts, first, second = weight.shape
    return (experts, second, first) if expert_transposed(module) else (experts, first, second)


def expert_transposed(module: nn.Module) -> bool:
    """Whether the module stores its experts ``[E, in, out]`` (transformers' ``is_transposed``)."""
    return getattr(module, "is_transposed", False) is True


def expert_delta(lora_A: torch.Tensor, lora_B: torch.Tensor, experts: int, transposed: bool) -> torch.Tensor:
    """``B_e @ A_e`` for every expert (unscaled), in the stored parameter's ``[E, ., .]`` layout
    (PEFT's ``ParamWrapper.get_delta_weight``)."""
    A = lora_A.reshape(experts, -1, lora_A.shape[-1])  # [E, r, in]
    B = lora_B.reshape(lora_B.shape[0], -1, experts)  # [out, r, E]
    return torch.einsum("ore,eri->eio" if transposed else "ore,eri->eoi", B, A)


def fused_expert_params(module: nn.Module) -> list[str]:
    """The 3-D expert parameters of a mixture-of-experts module, in registration order: those whose first
    dimension is the module's ``num_experts`` (transformers' experts modules: ``gate_up_proj``,
    ``down_proj``, ...). Empty for any other module."""
    experts = getattr(module, "num_experts", None)
    if isinstance(experts, bool) or not isinstance(experts, int) or experts < 1:
        return []
    return [
        name
        for name, p in module.named_parameters(recurse=False)
        if p.dim() == 3 and p.shape[0] == experts and is_expert_param(module, name)
    ]
