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

from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .layout import is_hf_conv1d
from .peft_variants import NUMBER, read_subconfig
from .variant import PeftOrderVariant, Setting, register_variant

if TYPE_CHECKING:
    from .core import LoRA

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


def initial_projection(
    in_features: int, groups: int, init: str, like: torch.Tensor
) -> tuple[torch.Tensor, bool]:
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
    def forward(
        ctx, x: torch.Tensor, lora_A: torch.Tensor, v: torch.Tensor, groups: int, scale: float
    ) -> torch.Tensor:
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
            rebuilt = compressed.to(dtype).unsqueeze(-1) * v.view(1, 1, -1)
            rebuilt = rebuilt.reshape(-1, compressed.shape[-1] * v.numel())[:, : ctx.x_shape[-1]] * ctx.scale
            grad_A = (grad_2d.transpose(0, 1) @ rebuilt).to(lora_A.dtype)
        return grad_x, grad_A, None, None, None


def check_linear_like(lora: LoRA, module: nn.Module, param: str | None, flag: str, name: str) -> None:
    """Where PEFT has VeLoRA and MonteCLoRA: nn.Linear and transformers Conv1D layers' weights."""
    if (
        lora.is_conv
        or lora.is_embedding
        or param is not None
        or not (isinstance(module, nn.Linear) or is_hf_conv1d(module))
    ):
        raise ValueError(
            f"LoRA {flag}=true works on nn.Linear and transformers Conv1D layers (as PEFT's "
            f"{name}), not on {type(module).__name__}" + (f" (param={param})" if param else "")
        )


@register_variant
class VeloraVariant(PeftOrderVariant):
    """Plain LoRA whose ``A`` gets its gradient from a compressed input in training."""

    switch = Setting(
        "velora", False, "bool", "VeLoRA, ``lora/velora.py``: A's gradient from a compressed input"
    )
    settings = (
        Setting("velora_groups", 64, "int", "sub-tokens each input is cut into, default 64"),
        Setting(
            "velora_init",
            "batch_average",
            "str",
            "the projection: batch_average, batch_average_once or random",
        ),
        Setting("velora_scale", 1.0, "float", "scale of the rebuilt input, default 1"),
    )
    flag_attribute = True
    attributes = ("velora_groups", "velora_init", "velora_scale", "velora_ready")
    peft_off = {"velora_config": None}
    peft_tensor_names = {"lora_velora_embed": "lora_velora_embed"}
    _PEFT_FIELDS = {
        "num_groups": ("velora_groups", int),
        "init_type": ("velora_init", str),
        "scale": ("velora_scale", NUMBER),
    }

    def __init__(
        self,
        rslora: bool = False,
        init: str = "kaiming",
        velora_groups: int = 64,
        velora_init: str = "batch_average",
        velora_scale: float = 1.0,
    ) -> None:
        super().__init__(rslora, init)
        self.velora_init = check_velora(velora_groups, velora_init, velora_scale)
        self.velora_groups, self.velora_scale = velora_groups, float(velora_scale)
        self.velora_ready = False

    def check_target(self, lora: LoRA, module: nn.Module, param: str | None) -> None:
        check_linear_like(lora, module, param, "velora", "VeLoRA")

    def add_parameters(self, lora: LoRA, module: nn.Module, weight: torch.Tensor, w: int) -> None:
        v, self.velora_ready = initial_projection(w, self.velora_groups, self.velora_init, weight)
        lora.register_buffer("lora_velora_embed", v)

    def weight_method_problem(self, lora: LoRA) -> str | None:
        return (
            "velora=true acts on the LoRA branch in training, which adapt_weight does not have: use "
            "adapt_output"
        )

    def project(self, lora: LoRA, x: torch.Tensor) -> torch.Tensor:
        if not (lora.training and torch.is_grad_enabled()):
            return F.linear(x, lora.lora_A)
        once_done = self.velora_init == "batch_average_once" and self.velora_ready
        if self.velora_init != "random" and not once_done:
            v = batch_projection(x, self.velora_groups)
            lora.lora_velora_embed.copy_(v.to(lora.lora_velora_embed.dtype))
            self.velora_ready = True
        return VeloraProjection.apply(
            x, lora.lora_A, lora.lora_velora_embed, self.velora_groups, self.velora_scale
        )

    def peft_fields(self) -> dict[str, Any]:
        velora = (
            ("init_type", self.velora_init),
            ("num_groups", self.velora_groups),
            ("scale", self.velora_scale),
        )
        return {**super().peft_fields(), "velora_config": velora}

    @classmethod
    def settings_from_peft(cls, config: Mapping[str, Any], source: str) -> dict[str, Any]:
        return read_subconfig(config, source, "velora_config", "velora", cls._PEFT_FIELDS)
