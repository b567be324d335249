"""KaSA (PEFT's ``kasa_config``, Knowledge-aware Singular-value Adaptation, arXiv:2412.06071).

Two changes to LoRA, as PEFT computes them:

1. At attach the base weight ``W [out, in]`` is replaced by its rank ``min(out, in) - r`` SVD approximation
   (its ``r`` smallest singular components are dropped). Our attach snapshots the weight first and detach
   restores it bit for bit (PEFT cannot undo this).
2. The update has a trained diagonal between the factors: ``scaling * B @ diag(lora_diag) @ A``;
   ``lora_diag`` starts as ``N(0, 1)`` (``B`` is zero, so the update is zero at attach).

The paper trains with two regularizers, which the loop must add itself (PEFT's ``_get_kasa_loss``):
``beta * ||lora_diag||^2 + gamma * (||B^T B - I||_F + ||A A^T - I||_F)`` (:func:`kasa_loss`).
"""
from __future__ import annotations

import torch


def check_kasa(beta: object, gamma: object) -> None:
    """Validate the regularizer weights. Raises ``ValueError``."""
    for name, value in (("kasa_beta", beta), ("kasa_gamma", gamma)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"LoRA {name} must be a non-negative number, got {value!r}")


def truncated(weight: torch.Tensor, r: int) -> torch.Tensor:
    """``W [out, in]`` without its ``r`` smallest singular components (computed in float32, returned in
    the weight's dtype)."""
    k = min(weight.shape)
    if r >= k:
        raise ValueError(f"LoRA kasa=true needs r < {k} (the smaller side of the {tuple(weight.shape)} "
                         f"weight) so that part of the weight is kept, got r={r}")
    U, S, Vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    keep = k - r
    return ((U[:, :keep] * S[:keep]) @ Vh[:keep]).to(weight.dtype)


def kasa_loss(lora_A: torch.Tensor, lora_B: torch.Tensor, diag: torch.Tensor, beta: float,
              gamma: float) -> torch.Tensor:
    """KaSA's regularizer for one layer: ``beta * sum(diag^2) + gamma * (||B^T B - I|| + ||A A^T - I||)``
    (float32)."""
    A, B, d = lora_A.float(), lora_B.float(), diag.float()
    eye = torch.eye(d.shape[0], device=d.device, dtype=torch.float32)
    orthogonal = torch.linalg.norm(B.t() @ B - eye) + torch.linalg.norm(A @ A.t() - eye)
    return beta * (d ** 2).sum() + gamma * orthogonal
