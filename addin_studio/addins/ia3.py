"""(IA)³ (Liu et al., 2022): learned rescaling of keys, values and MLP activations, one vector each."""

from __future__ import annotations

import torch
from torch import nn

from ._sizing import channels_back, channels_last, feature_layout
from .base import AddinBase, PointInfo
from .ia3_peft import IA3Peft
from .registry import register_addin


@register_addin
class IA3(AddinBase):
    """``x * l`` over the feature dimension, with ``l`` a learned vector that starts at ones (an identity).

    As in the paper (and PEFT's ``IA3Config``): after the key and value projections with
    ``adapt_output``, and before the MLP's down projection with ``adapt_input`` (PEFT's
    ``feedforward_modules``, which scale the layer's input)::

        (IA3.adapt_output): ...->(blocks[0:12].attn.k_proj){inout1}->...
        (IA3.adapt_input): ...->{inout1}(blocks[0:12].mlp.fc2)->...

    For a fused ``qkv`` projection, ``skip`` leaves the first features unscaled: on a timm ViT of width
    ``d``, ``(IA3.adapt_output, skip=d): ...->(blocks[0:12].attn.qkv){inout1}->...`` rescales the keys
    and values only. ``merge(module)`` folds the vector into a Linear layer's weight (and bias).
    """

    offers = ("adapt_output", "adapt_input")  # the methods a string may name
    peft = IA3Peft()  # its Hugging Face PEFT form (addins/ia3_peft.py)

    def __init__(self, point: PointInfo, skip: int = 0) -> None:
        super().__init__()
        features, self.channel_first = feature_layout(point, "IA3")
        if isinstance(skip, bool) or not isinstance(skip, int) or not 0 <= skip < features:
            raise ValueError(
                f"IA3 skip must be a whole number in [0, {features}) (the feature at "
                f"{point.path}:{point.side} has {features}), got {skip!r}"
            )
        self.skip = skip
        self.side = point.side  # the output is rescaled after a layer, the input before one
        self.ia3_l = nn.Parameter(torch.ones(features - skip))
        if not isinstance(point.module, nn.Linear):
            self.merge = None  # Attachment.merge skips add-ins without a callable merge

    def extra_repr(self) -> str:
        return f"features={self.ia3_l.numel() + self.skip}, skip={self.skip}"

    def scale_vector(self) -> torch.Tensor:
        """The full per-feature scale (ones for the skipped features)."""
        if not self.skip:
            return self.ia3_l
        return torch.cat([self.ia3_l.new_ones(self.skip), self.ia3_l])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last(x, self.channel_first)
        return channels_back(x * self.scale_vector().to(x.dtype), self.channel_first)

    def adapt_input(self, module: nn.Module, inputs: tuple) -> torch.Tensor:
        return self(inputs[0])

    def adapt_output(self, module: nn.Module, inputs: tuple, outputs: torch.Tensor) -> torch.Tensor:
        return self(outputs)

    def merge(self, module: nn.Module) -> None:
        """Fold into the Linear layer: its rows (after the layer) or its columns (before it)."""
        scale = self.scale_vector().to(module.weight.dtype)
        if self.side == "post":
            module.weight.mul_(scale[:, None])
            if module.bias is not None:
                module.bias.mul_(scale)
        else:
            module.weight.mul_(scale[None, :])
