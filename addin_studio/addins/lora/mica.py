"""MiCA (PEFT's ``init_lora_weights="mica"``, Minor Component Adaptation, arXiv:2604.01694).

``B`` starts as the ``r`` left singular vectors of the base matrix with the *smallest* singular values and
is frozen; ``A`` starts at zero and is the only trained factor. The base weight is not changed (``B @ A``
is zero at attach).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .inits import matrix_of
from .variant import LoraVariant, check_float, register_variant

if TYPE_CHECKING:
    from .core import LoRA


def mica_init(matrix: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` for the base matrix ``[h, w]`` (float32): ``A`` zeros ``[r, w]``, ``B`` the last ``r``
    columns of ``U`` in ``matrix = U S V^T``."""
    if r > min(matrix.shape):
        raise ValueError(
            f"LoRA init=mica needs r <= {min(matrix.shape)} (the smaller side of the "
            f"{tuple(matrix.shape)} weight), got r={r}"
        )
    U, _, _ = torch.linalg.svd(matrix, full_matrices=False)
    return torch.zeros(r, matrix.shape[1], device=matrix.device), U[:, -r:].contiguous()


@register_variant
class MicaVariant(LoraVariant):
    """Chosen by ``init=mica``: ``B`` the weight's minor singular vectors (frozen), ``A`` zero and trained."""

    init_value = "mica"

    def check_target(self, lora: LoRA, module: nn.Module, param: str | None) -> None:
        if lora.is_conv:
            raise ValueError(
                f"LoRA init=mica works on Linear, Embedding and transformers Conv1D layers (as "
                f"PEFT's MiCA), not on {type(module).__name__}"
            )

    def init_factors(self, lora: LoRA, weight: torch.Tensor, h: int, w: int) -> None:
        check_float(weight, "init=mica")
        with torch.no_grad():
            A, B = mica_init(matrix_of(weight.detach().float(), h, w, lora.transposed), lora.r)
            lora.lora_A.copy_(A)
            lora.lora_B.copy_(B)
        lora.lora_B.requires_grad_(False)  # MiCA trains A only (PEFT freezes lora_B too)
