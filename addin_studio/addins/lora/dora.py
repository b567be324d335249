"""DoRA (PEFT's ``use_dora``, ``dora=true``): a trained magnitude per output row (``lora_magnitude``, the
row norms of the weight at attach) times the direction ``(W + delta) / ||W + delta||``; the norm is not
differentiated, as in PEFT. The output hook computes it as PEFT's ``DoraLinearLayer.forward``; merging
writes the rescaled weight (not an addition)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import stored_weight
from .grouped import peft_dora_delta
from .variant import LoraVariant, Setting, register_variant

if TYPE_CHECKING:
    from .core import LoRA


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


@register_variant
class DoraVariant(LoraVariant):
    """``magnitude * (W + delta) / ||W + delta||`` per output row."""

    switch = Setting(
        "dora",
        False,
        "bool",
        "DoRA: a trained magnitude per output row (lora_magnitude) times the direction of the updated weight",
    )
    flag_attribute = True
    peft_off = {"use_dora": False}
    peft_tensor_names = {"lora_magnitude_vector": "lora_magnitude"}
    merge_adds = False  # merge writes the rescaled weight

    def add_parameters(self, lora: LoRA, module: nn.Module, weight: torch.Tensor, w: int) -> None:
        with torch.no_grad():
            base = weight.detach() - lora.delta() if self.moves_base else weight.detach()
            norm = dora_norm(base + self._norm_delta(lora).to(weight.dtype), lora.transposed)
        lora.lora_magnitude = nn.Parameter(norm.clone())

    def _norm_delta(self, lora: LoRA) -> torch.Tensor:
        """What DoRA's norm adds to the weight: the update, or PEFT's matrix for a grouped conv."""
        if lora.grouped:
            return peft_dora_delta(lora.lora_A, lora.lora_B, lora.weight_shape, lora.scaling)
        return lora.delta()

    def _scale(self, lora: LoRA, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``magnitude / ||W + delta||`` per output row (the norm not differentiated)."""
        norm = dora_norm(weight + delta.detach().to(weight.dtype), lora.transposed).detach()
        return lora.lora_magnitude / norm

    def adapt_output(
        self, lora: LoRA, module: nn.Module, x: torch.Tensor, outputs: torch.Tensor
    ) -> torch.Tensor:
        dropped = lora.dropout and lora.training
        if dropped:
            x = F.dropout(x, lora.dropout, True)  # one mask for the branch and the base
        branch = lora.branch(x, module)
        weight = stored_weight(module, lora.param)  # (a parametrized one: its computed value)
        scale = self._scale(lora, weight, self._norm_delta(lora))
        if lora.is_conv:
            scale = scale.view(-1, *([1] * (outputs.dim() - 2)))
        if dropped:  # PEFT recomputes the base output from the dropped-out input
            base = _base_without_bias(lora, module, x, weight)
        else:
            bias = getattr(module, "bias", None)
            base = outputs
            if isinstance(bias, torch.Tensor):
                base = outputs - (bias.view(-1, *([1] * (outputs.dim() - 2))) if lora.is_conv else bias)
        return outputs + (scale - 1) * base + scale * branch

    def adapt_weight(self, lora: LoRA, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        scale = self._scale(lora, weight, delta)
        return dora_view(scale, weight.dim(), lora.transposed) * (weight + delta)

    def merge(self, lora: LoRA, module: nn.Module, weight: torch.Tensor) -> None:
        weight.copy_(self.adapt_weight(lora, weight, lora.delta().to(weight.dtype)))

    def peft_fields(self) -> dict[str, Any]:
        return {**super().peft_fields(), "use_dora": True}

    def peft_tensors(self, lora: LoRA) -> dict[str, torch.Tensor]:
        ones = [1] * (len(lora.weight_shape) - 2)
        m = lora.lora_magnitude
        return {"lora_magnitude_vector": m.reshape(1, -1, *ones) if lora.is_conv else m}

    @classmethod
    def settings_from_peft(cls, config: Mapping[str, Any], source: str) -> dict[str, Any]:
        return {"dora": True} if config.get("use_dora") else {}


def _base_without_bias(lora: LoRA, module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if lora.is_conv:
        return module._conv_forward(x, weight, None)
    if lora.transposed and not lora.is_embedding:  # transformers Conv1D: x @ W
        return x @ weight
    return F.linear(x, weight)
