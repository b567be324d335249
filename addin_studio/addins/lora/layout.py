"""Where LoRA applies: the layer kinds it knows, the ``[h, w]`` matrix it factorizes on each (its layout),
the parameter it adapts, and why the output hook cannot be right on a layer (so ``adapt_weight`` is needed).

Layouts (``B @ A`` is ``[h, w]``): Linear ``[out, in]``; transformers ``Conv1D`` (GPT-2, weight
``[in, out]``) ``[out, in]``, transposed onto the weight (PEFT's ``fan_in_fan_out``); ``nn.Embedding``
``[dim, num]`` transposed, as PEFT's ``lora_embedding_A [r, num]`` / ``lora_embedding_B [dim, r]``;
convolutions use GIFt's "balanced" factorization: the kernel ``[out, in/groups, k0, k1, ...]`` is seen as
``[out*k0, in/groups*k1*...]`` (Conv1d: ``[out, in/groups*k0]``), or with ``layout=peft`` PEFT's
``[out, in/groups*k0*k1*...]`` (so a conv LoRA can go to PEFT and back; the same as balanced for Conv1d
and 1x1 kernels).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..weights import is_computed, peek_weight

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
HOOK_METHOD = "adapt_output"
WEIGHT_METHOD = "adapt_weight"


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections): ``y = x @ W + b`` with ``W`` stored ``[in, out]``.

    Recognised by its class name and layout, so the core never imports transformers.
    """
    cls = type(module)
    return (
        cls.__name__ == "Conv1D"
        and cls.__module__.startswith("transformers")
        and isinstance(getattr(module, "weight", None), torch.Tensor)
        and module.weight.dim() == 2
        and getattr(module, "nf", None) == module.weight.shape[1]
    )


def matrix_layout(
    module: nn.Module, param: str, peft_conv: bool = False, named: bool = False
) -> tuple[int, int, bool]:
    """``(h, w, transposed)``: ``B @ A`` is ``[h, w]``; transposed when the weight is stored ``[w, h]``.
    ``peft_conv``: convolutions in PEFT's layout ``[out, in/groups*k0*k1*...]``. ``named``: ``param``
    was given explicitly, so a module of no known kind is adapted as a plain parameter."""
    known = isinstance(module, (nn.Linear, nn.Embedding) + CONVS) or is_hf_conv1d(module)
    if param != "weight" or isinstance(module, nn.MultiheadAttention) or (named and not known):
        weight = getattr(module, "_parameters", {}).get(param)
        if weight is None and is_computed(module, param):  # parametrized: the weight it computes
            weight = peek_weight(module, param)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{type(module).__name__} has no parameter '{param}' for LoRA to adapt")
        if weight.dim() != 2:
            raise TypeError(
                f"LoRA adapts a matrix; '{param}' of {type(module).__name__} has shape "
                f"{tuple(weight.shape)} (param= takes a 2-D parameter, or a 3-D stack of "
                f"expert matrices: [experts, out, in])"
            )
        return weight.shape[0], weight.shape[1], False
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, False
    if is_hf_conv1d(module):
        return module.weight.shape[1], module.weight.shape[0], True
    if isinstance(module, nn.Embedding):
        return module.embedding_dim, module.num_embeddings, True
    if isinstance(module, CONVS):
        out, in_per_group, *kernel = (
            module._parameters.get("weight")
            if not is_computed(module, "weight")
            else peek_weight(module, "weight")
        ).shape
        if isinstance(module, nn.Conv1d) or peft_conv:
            return out, in_per_group * math.prod(kernel), False
        return out * kernel[0], in_per_group * math.prod(kernel[1:]), False
    raise TypeError(
        f"LoRA works on nn.Linear, nn.Conv1d/2d/3d, nn.Embedding, nn.MultiheadAttention and "
        f"transformers Conv1D layers (or a named parameter with param=), not "
        f"{type(module).__name__}"
    )


def lora_shape(module: nn.Module, param: str = "weight") -> tuple[int, int]:
    """``(h, w)`` of the matrix LoRA factorizes for ``module``: ``B`` is ``[h, r]``, ``A`` is ``[r, w]``."""
    h, w, _ = matrix_layout(module, param)
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
    for base in (nn.Embedding,) + CONVS:
        if isinstance(module, base):
            if type(module).forward is not base.forward:
                return (
                    f"{name} has its own forward (it transforms its input or weight before the "
                    f"{base.__name__} computation), so an update added to the output would not match"
                )
            return None
    if is_hf_conv1d(module):
        return None
    return f"{name} is not a layer the output hook knows"


def check_lora_target(module: nn.Module, path: str = "") -> None:
    """Raise a clear error if LoRA cannot be placed on ``module`` at all."""
    matrix_layout(module, default_param(module))
    if isinstance(module, nn.MultiheadAttention) and not module._qkv_same_embed_dim:
        where = f" '{path}'" if path else ""
        raise TypeError(
            f"LoRA on nn.MultiheadAttention{where} needs equal query/key/value sizes "
            f"(one in_proj_weight); adapt q_proj_weight/k_proj_weight/v_proj_weight with "
            f"param="
        )
