"""The LoRA variants as settings of the built-in LoRA: rsLoRA, LoRA bias, inits (Gaussian, PiSSA, OLoRA), DoRA
(VeLoRA, KaSA and the MiCA init have their own modules: ``lora_velora.py``, ``lora_kasa.py``, ``lora_mica.py``).

Each is a small function of the factors and the base weight, computed the way Hugging Face PEFT computes
it (so equal weights give equal results). ``B @ A`` is LoRA's ``[h, w]`` matrix (see ``addins/lora.py``
for the layouts); ``matrix_of`` views the stored weight as that matrix.
"""
from __future__ import annotations

import math

import torch

INITS = ("kaiming", "gaussian", "pissa", "olora", "mica")
#: inits that move part of the base weight into the adapter (the engine snapshots and restores it)
BASE_MOVING_INITS = ("pissa", "olora")


def check_variant_settings(rslora: object, bias: object, init: object, dora: object) -> str:
    """Validate the variant settings; return the init's canonical name. Raises ``ValueError``."""
    for name, value in (("rslora", rslora), ("bias", bias), ("dora", dora)):
        if not isinstance(value, bool):
            raise ValueError(f"LoRA {name} must be true or false, got {value!r}")
    if init is True:
        init = "kaiming"
    if not isinstance(init, str) or init.lower() not in INITS:
        raise ValueError(f"LoRA init must be one of {', '.join(INITS)}, got {init!r}")
    init = init.lower()
    if bias and init != "kaiming":
        raise ValueError(f"LoRA bias=true needs the default init, not init={init} (as in PEFT: "
                         f"lora_bias only with init_lora_weights=True)")
    if bias and dora:
        raise ValueError("LoRA bias=true cannot be combined with dora=true (PEFT does not support it "
                         "either)")
    return init


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
        raise ValueError(f"LoRA init={kind} needs r <= {min(matrix.shape)} (the smaller side of the "
                         f"{tuple(matrix.shape)} weight), got r={r}")
    if kind == "pissa":
        V, S, Uh = torch.linalg.svd(matrix, full_matrices=False)
        Vr = V[:, :r]
        Sr = S[:r] / scaling
        Uhr = Uh[:r]
        return torch.diag(torch.sqrt(Sr)) @ Uhr, Vr @ torch.diag(torch.sqrt(Sr))
    Q, R = torch.linalg.qr(matrix)
    return R[:r].contiguous(), Q[:, :r].contiguous()


def dora_norm(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """DoRA's weight norm: the L2 norm of each output row of ``weight`` (PEFT's ``get_weight_norm``):
    over all dims but the first (Linear, convs), or over the first when the weight is stored
    ``[in, out]`` (transformers Conv1D, nn.Embedding)."""
    if transposed:
        return torch.linalg.norm(weight.t(), dim=1).to(weight.dtype)
    if weight.dim() == 2:
        return torch.linalg.norm(weight, dim=1).to(weight.dtype)
    return weight.norm(p=2, dim=tuple(range(1, weight.dim()))).to(weight.dtype)


def dora_view(scale: torch.Tensor, weight_dim: int, transposed: bool) -> torch.Tensor:
    """``scale`` (one per output row) shaped to multiply the stored weight."""
    if transposed:
        return scale.view(1, -1)
    return scale.view(-1, *([1] * (weight_dim - 1)))
