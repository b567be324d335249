"""AdaptFormer (Chen et al.): a scaled bottleneck in parallel with a module (typically a block's MLP)."""

from __future__ import annotations

import torch
from torch import nn

from .adapter import Bottleneck
from .base import PointInfo
from .registry import register_addin


@register_addin
class AdaptFormer(Bottleneck):
    """``module(x) + scale * up(relu(down(x)))``: the branch reads the module's input.

    Place it across the module, reading its input and adding at its output::

        (AdaptFormer.adapt_across_output, bottleneck=64, scale=0.1): ...->{in1}(blocks[0:12].mlp){out1}->...

    Settings: ``bottleneck`` (default 64), ``scale`` (default 0.1, as the paper), ``act`` (relu).
    ``up`` starts at zero, so the model is unchanged at attach.
    """

    offers = ("adapt_across_output", "adapt_across_input")  # the methods a string may name

    def __init__(
        self,
        point: PointInfo,
        source_point: PointInfo | None = None,
        bottleneck: int = 64,
        scale: float = 0.1,
        act: str = "relu",
    ) -> None:
        super().__init__(point, source_point, bottleneck, act)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"AdaptFormer scale must be a number, got {scale!r}")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._branch(x, self.in_channel_first, self.channel_first) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, act={self.act_name}"

    def adapt_across_output(self, module: nn.Module, inputs: tuple, outputs: torch.Tensor) -> torch.Tensor:
        return outputs + self(self.inputs_cache)

    def adapt_across_input(self, module: nn.Module, inputs: tuple) -> torch.Tensor:
        return inputs[0] + self(self.inputs_cache)
