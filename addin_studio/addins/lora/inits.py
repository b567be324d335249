"""The settings every LoRA variant shares: rsLoRA's scaling and the inits (Kaiming, Gaussian, PiSSA, OLoRA;
MiCA is a variant of its own, ``mica.py``).

Each is a small function of the factors and the base weight, computed the way Hugging Face PEFT computes
it (so equal weights give equal results). ``B @ A`` is LoRA's ``[h, w]`` matrix (see ``layout.py``);
``matrix_of`` views the stored weight as that matrix.
"""

from __future__ import annotations

import math

import torch

INITS = ("kaiming", "gaussian", "pissa", "olora", "mica")
#: inits that move part of the base weight into the adapter (the engine snapshots and restores it)
BASE_MOVING_INITS = ("pissa", "olora")


def lora_scaling(r: int, alpha: float, rslora: bool) -> float:
    """``alpha / r``, or rsLoRA's ``alpha / sqrt(r)``."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def matrix_of(weight: torch.Tensor, h: int, w: int, transposed: bool) -> torch.Tensor:
    """The stored weight as LoRA's ``[h, w]`` matrix."""
    return weight.t() if transposed else weight.reshape(h, w)


def gaussian_init(lora_A: torch.Tensor, r: int) -> None:
    """PEFT's ``init_lora_weights="gaussian"``: ``A ~ N(0, 1/r)`` (``B`` stays zero)."""
    torch.nn.init.normal_(lora_A, std=1 / r)


def svd_init(kind: str, matrix: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` from the base matrix ``[h, w]`` (float32), as PEFT's ``pissa_init`` / ``olora_init``.

    PiSSA: the top-``r`` singular triplets, ``A = sqrt(S/scaling) Uh``, ``B = V sqrt(S/scaling)``.
    OLoRA: the thin QR decomposition, ``A = R[:r]``, ``B = Q[:, :r]``. The base keeps
    ``W - scaling * B @ A``.
    """
    if r > min(matrix.shape):
        raise ValueError(
            f"LoRA init={kind} needs r <= {min(matrix.shape)} (the smaller side of the "
            f"{tuple(matrix.shape)} weight), got r={r}"
        )
    if kind == "pissa":
        V, S, Uh = torch.linalg.svd(matrix, full_matrices=False)
        Vr = V[:, :r]
        Sr = S[:r] / scaling
        Uhr = Uh[:r]
        return torch.diag(torch.sqrt(Sr)) @ Uhr, Vr @ torch.diag(torch.sqrt(Sr))
    Q, R = torch.linalg.qr(matrix)
    return R[:r].contiguous(), Q[:, :r].contiguous()
