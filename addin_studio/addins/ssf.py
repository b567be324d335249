"""SSF (Lian et al.): scale and shift the feature at a point, ``x * gamma + beta`` per channel."""

from __future__ import annotations

import torch
from torch import nn

from ._sizing import feature_layout
from .base import AddinBase, PointInfo
from .registry import register_addin


@register_addin
class SSF(AddinBase):
    """``x * gamma + beta`` over the feature dimension (last, or 1 for 4-D conv maps).

    ``gamma`` starts at ones and ``beta`` at zeros (an identity). Place it after a module with
    ``adapt_output`` or before one with ``adapt_input``, e.g.
    ``(SSF.adapt_output): ...->(blocks[0:12].attn.qkv){inout1}->...``.
    ``merge(module)`` folds it into a Linear/Conv layer it follows when that layer has a bias.
    """

    offers = ("adapt_output", "adapt_input")  # the methods a string may name

    def __init__(self, point: PointInfo) -> None:
        super().__init__()
        features, self.channel_first = feature_layout(point, "SSF")
        self.gamma = nn.Parameter(torch.ones(features))
        self.beta = nn.Parameter(torch.zeros(features))
        module = point.module
        foldable = (
            point.side == "post"
            and getattr(module, "bias", None) is not None
            and (
                isinstance(module, nn.Linear)
                and not self.channel_first
                or isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
                and self.channel_first
            )
            and module.weight.shape[0] == features
        )
        if not foldable:
            self.merge = None  # Attachment.merge skips add-ins without a callable merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_first:
            shape = (-1,) + (1,) * (x.dim() - 2)
            return x * self.gamma.view(shape) + self.beta.view(shape)
        return x * self.gamma + self.beta

    def adapt_input(self, module: nn.Module, inputs: tuple) -> torch.Tensor:
        return self(inputs[0])

    def adapt_output(self, module: nn.Module, inputs: tuple, outputs: torch.Tensor) -> torch.Tensor:
        return self(outputs)

    def merge(self, module: nn.Module) -> None:
        """Fold into the layer before: ``W' = gamma * W`` (per output row), ``b' = gamma * b + beta``."""
        shape = (-1,) + (1,) * (module.weight.dim() - 1)
        module.weight.mul_(self.gamma.view(shape).to(module.weight.dtype))
        module.bias.mul_(self.gamma.to(module.bias.dtype)).add_(self.beta.to(module.bias.dtype))
