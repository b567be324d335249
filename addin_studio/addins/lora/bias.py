"""LoRA bias (PEFT's ``lora_bias``, ``bias=true``): a trained bias on ``B`` (``lora_bias``, one per output
channel, zeros at attach), added to the layer's output as ``scaling * lora_bias`` and merged into the
layer's bias. Output hook only; not with another init than the default (as in PEFT)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import is_computed
from .layout import default_param
from .variant import LoraVariant, Setting, register_variant

if TYPE_CHECKING:
    from .core import LoRA


@register_variant
class BiasVariant(LoraVariant):
    """``out + scaling * (B(A(x)) + lora_bias)``."""

    switch = Setting(
        "bias",
        False,
        "bool",
        "a trained bias on B (lora_bias, one per output channel), merged "
        "into the layer's bias; output hook only",
    )
    peft_off = {"lora_bias": False}
    peft_tensor_names = {"lora_B.bias": "lora_bias"}

    @classmethod
    def check_init(cls, init: str) -> None:
        if init != "kaiming":
            raise ValueError(
                f"LoRA bias=true needs the default init, not init={init} (as in PEFT: "
                f"lora_bias only with init_lora_weights=True)"
            )

    @classmethod
    def combination_error(cls, other: type[LoraVariant]) -> str:
        return f"LoRA bias=true cannot be combined with {other.label()} (PEFT has one variant per layer)"

    def add_parameters(self, lora: LoRA, module: nn.Module, weight: torch.Tensor, w: int) -> None:
        if (
            lora.is_embedding
            or lora.param != default_param(module)
            or isinstance(module, nn.MultiheadAttention)
        ):
            raise ValueError(
                f"LoRA bias=true adds to a layer's output: not on {type(module).__name__} "
                f"(param={lora.param}); PEFT has no lora_bias there"
            )
        channels = weight.shape[1] if lora.transposed else weight.shape[0]
        lora.lora_bias = nn.Parameter(torch.zeros(channels, dtype=weight.dtype, device=weight.device))

    def weight_method_problem(self, lora: LoRA) -> str | None:
        return (
            "LoRA bias=true adds to the layer's output, which adapt_weight does not change: use "
            "adapt_output or bias=false"
        )

    def finish_branch(self, lora: LoRA, out: torch.Tensor) -> torch.Tensor:
        b = lora.lora_bias * lora.scaling
        return out + (b.view(-1, *([1] * (out.dim() - 2))) if lora.is_conv else b)

    def adapt_output(
        self, lora: LoRA, module: nn.Module, x: torch.Tensor, outputs: torch.Tensor
    ) -> torch.Tensor:
        if lora.dropout and lora.training:
            x = F.dropout(x, lora.dropout, True)
        return outputs + lora.branch(x, module)

    def merge_problem(self, lora: LoRA, module: nn.Module) -> str | None:
        if getattr(module, "bias", None) is None:
            return (
                "LoRA bias=true cannot be merged: the layer has no bias to fold it into (PEFT refuses "
                "this merge too)"
            )
        if is_computed(module, "bias"):
            return (
                "LoRA bias=true cannot be merged: the layer's bias is computed by a parametrization, "
                "not stored, so there is no bias to fold it into"
            )
        return None

    def merge(self, lora: LoRA, module: nn.Module, weight: torch.Tensor) -> None:
        super().merge(lora, module, weight)
        module.bias.add_((lora.lora_bias * lora.scaling).to(module.bias.dtype))

    def peft_fields(self) -> dict[str, Any]:
        return {**super().peft_fields(), "lora_bias": True}

    @classmethod
    def settings_from_peft(cls, config: Mapping[str, Any], source: str) -> dict[str, Any]:
        return {"bias": True} if config.get("lora_bias") else {}
