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

from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from .peft_variants import NUMBER, read_subconfig
from .variant import PeftOrderVariant, Setting, register_variant

if TYPE_CHECKING:
    from .core import LoRA


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
        raise ValueError(
            f"LoRA kasa=true needs r < {k} (the smaller side of the {tuple(weight.shape)} "
            f"weight) so that part of the weight is kept, got r={r}"
        )
    U, S, Vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    keep = k - r
    return ((U[:, :keep] * S[:keep]) @ Vh[:keep]).to(weight.dtype)


def kasa_loss(
    lora_A: torch.Tensor, lora_B: torch.Tensor, diag: torch.Tensor, beta: float, gamma: float
) -> torch.Tensor:
    """KaSA's regularizer for one layer: ``beta * sum(diag^2) + gamma * (||B^T B - I|| + ||A A^T - I||)``
    (float32)."""
    A, B, d = lora_A.float(), lora_B.float(), diag.float()
    eye = torch.eye(d.shape[0], device=d.device, dtype=torch.float32)
    orthogonal = torch.linalg.norm(B.t() @ B - eye) + torch.linalg.norm(A @ A.t() - eye)
    return beta * (d**2).sum() + gamma * orthogonal


@register_variant
class KasaVariant(PeftOrderVariant):
    """``scaling * B @ diag(lora_diag) @ A`` on a weight without its ``r`` smallest singular components."""

    switch = Setting(
        "kasa",
        False,
        "bool",
        "KaSA, ``lora/kasa.py``: drops the weight's r smallest singular "
        "components at attach, a trained diagonal between B and A",
    )
    settings = (
        Setting("kasa_beta", 1e-4, "float", "weight of the diagonal's L2 term in kasa_loss, default 1e-4"),
        Setting("kasa_gamma", 1e-3, "float", "weight of the orthogonality term in kasa_loss, default 1e-3"),
    )
    flag_attribute = True
    attributes = ("kasa_beta", "kasa_gamma")
    peft_off = {"kasa_config": None}
    peft_tensor_names = {"lora_diag": "lora_diag"}
    _PEFT_FIELDS = {"beta": ("kasa_beta", NUMBER), "gamma": ("kasa_gamma", NUMBER)}

    def __init__(
        self, rslora: bool = False, init: str = "kaiming", kasa_beta: float = 1e-4, kasa_gamma: float = 1e-3
    ) -> None:
        super().__init__(rslora, init)
        check_kasa(kasa_beta, kasa_gamma)
        self.kasa_beta, self.kasa_gamma = float(kasa_beta), float(kasa_gamma)

    def check_target(self, lora: LoRA, module: nn.Module, param: str | None) -> None:
        if not isinstance(module, nn.Linear) or lora.param != "weight":
            raise ValueError(
                f"LoRA kasa=true works on nn.Linear weights (as PEFT's KaSA), not on "
                f"{type(module).__name__}" + (f" (param={param})" if param else "")
            )

    def add_parameters(self, lora: LoRA, module: nn.Module, weight: torch.Tensor, w: int) -> None:
        truncated(weight, lora.r)  # refuses r >= min(out, in) here, before attach changes anything
        lora.lora_diag = nn.Parameter(torch.randn(lora.r, dtype=weight.dtype, device=weight.device))

    @property
    def moves_base(self) -> bool:
        return True

    def move_base(self, lora: LoRA, module: nn.Module) -> None:
        """Drop the weight's ``r`` smallest singular components (once, at attach)."""
        weight = module._parameters[lora.param]
        weight.copy_(truncated(weight, lora.r))

    def product(self, lora: LoRA) -> torch.Tensor:
        return (lora.lora_B * lora.lora_diag) @ lora.lora_A

    def between(self, lora: LoRA, h: torch.Tensor) -> torch.Tensor:
        return h * lora.lora_diag

    def loss(self, lora: LoRA) -> torch.Tensor:
        return kasa_loss(lora.lora_A, lora.lora_B, lora.lora_diag, self.kasa_beta, self.kasa_gamma)

    def peft_fields(self) -> dict[str, Any]:
        kasa = (("beta", self.kasa_beta), ("gamma", self.kasa_gamma))
        return {**super().peft_fields(), "kasa_config": kasa}

    @classmethod
    def settings_from_peft(cls, config: Mapping[str, Any], source: str) -> dict[str, Any]:
        return read_subconfig(config, source, "kasa_config", "kasa", cls._PEFT_FIELDS)
