"""VeLoRA (PEFT's ``velora_config``): LoRA whose ``A`` projection keeps only a compressed copy of its input
for the backward pass.

The forward is plain LoRA. In training, the input ``x [.., in]`` of ``A`` is cut into ``groups`` sub-tokens
of ``ceil(in / groups)`` features (zero-padded) and each sub-token is stored as one number, its projection
on a unit vector ``v`` (the add-in's ``lora_velora_embed`` buffer). ``A``'s gradient is computed from the
rank-1 reconstruction ``scale * (x_g . v) v`` of each sub-token instead of ``x`` itself; the input's
gradient is exact. ``v`` is chosen as PEFT chooses it:

- ``random``: a normalized Gaussian vector drawn at attach (then loaded from files);
- ``batch_average``: the normalized mean sub-token of every training batch, before its forward;
- ``batch_average_once``: the same from the first training batch after attach (or load) only, then kept.

Only training forwards with gradients enabled use (and update) the projection; eval is plain LoRA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

VELORA_INITS = ("batch_average", "batch_average_once", "random")


def check_velora(groups: object, init: object, scale: object) -> str:
    """Validate the VeLoRA settings; return the init's name. Raises ``ValueError``."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"LoRA velora_groups must be a positive integer, got {groups!r}")
    if not isinstance(init, str) or init.lower() not in VELORA_INITS:
        raise ValueError(f"LoRA velora_init must be one of {', '.join(VELORA_INITS)}, got {init!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"LoRA velora_scale must be a positive number, got {scale!r}")
    return init.lower()


def group_dim(in_features: int, groups: int) -> int:
    """Features per sub-token: ``ceil(in_features / groups)``."""
    return (in_features + groups - 1) // groups


def _subtokens(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``x [.., in]`` as ``[tokens, groups, group_dim]`` (the last features zero-padded)."""
    dim = group_dim(x.shape[-1], groups)
    if x.shape[-1] != groups * dim:
        x = F.pad(x, (0, groups * dim - x.shape[-1]))
    return x.reshape(-1, groups, dim)


def normalized(v: torch.Tensor) -> torch.Tensor:
    """``v / ||v||`` in float32 (all ones, normalized, when ``v`` is zero)."""
    v = v.float()
    norm = torch.linalg.vector_norm(v)
    if norm == 0:
        v = torch.ones_like(v)
        norm = torch.linalg.vector_norm(v)
    return v / norm


def initial_projection(in_features: int, groups: int, init: str, like: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(v, ready)`` at attach: a random unit vector (ready) or zeros to be set by the first batch."""
    dim = group_dim(in_features, groups)
    if init == "random":
        v = torch.randn(dim, device=like.device, dtype=like.dtype)
        return normalized(v).to(like.dtype), True
    return torch.zeros(dim, device=like.device, dtype=like.dtype), False


def batch_projection(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The normalized mean sub-token of a batch (float32)."""
    with torch.no_grad():
        sub = _subtokens(x.detach(), groups)
        return normalized(sub.reshape(-1, sub.shape[-1]).mean(dim=0))


class VeloraProjection(torch.autograd.Function):
    """``x @ A^T`` whose backward computes ``A``'s gradient from the compressed input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lora_A: torch.Tensor, v: torch.Tensor, groups: int,
                scale: float) -> torch.Tensor:
        ctx.x_shape, ctx.x_dtype, ctx.scale = tuple(x.shape), x.dtype, scale
        compressed = torch.einsum("tgd,d->tg", _subtokens(x, groups), v.to(x.dtype))
        ctx.save_for_backward(compressed, lora_A, v)
        return F.linear(x, lora_A)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        compressed, lora_A, v = ctx.saved_tensors
        dtype = grad_out.dtype
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1]).to(dtype)
        grad_x = grad_A = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_2d @ lora_A.to(dtype)).reshape(ctx.x_shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            v = v.to(dtype)
            rebuilt = (compressed.to(dtype).unsqueeze(-1) * v.view(1, 1, -1))
            rebuilt = rebuilt.reshape(-1, compressed.shape[-1] * v.numel())[:, :ctx.x_shape[-1]] * ctx.scale
            grad_A = (grad_2d.transpose(0, 1) @ rebuilt).to(lora_A.dtype)
        return grad_x, grad_A, None, None, None
