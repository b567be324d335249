"""MiCA (PEFT's ``init_lora_weights="mica"``, Minor Component Adaptation, arXiv:2604.01694).

``B`` starts as the ``r`` left singular vectors of the base matrix with the *smallest* singular values and
is frozen; ``A`` starts at zero and is the only trained factor. The base weight is not changed (``B @ A``
is zero at attach).
"""
from __future__ import annotations

import torch


def mica_init(matrix: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` for the base matrix ``[h, w]`` (float32): ``A`` zeros ``[r, w]``, ``B`` the last ``r``
    columns of ``U`` in ``matrix = U S V^T``."""
    if r > min(matrix.shape):
        raise ValueError(f"LoRA init=mica needs r <= {min(matrix.shape)} (the smaller side of the "
                         f"{tuple(matrix.shape)} weight), got r={r}")
    U, _, _ = torch.linalg.svd(matrix, full_matrices=False)
    return torch.zeros(r, matrix.shape[1], device=matrix.device), U[:, -r:].contiguous()
