"""Convpass (Jie & Deng, 2022): a convolutional bypass that gives ViT blocks a 3x3 spatial prior."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._sizing import positive_int
from .base import AddinBase, PointInfo
from .registry import register_addin


def _tokens(point: PointInfo | None, what: str) -> tuple[int, int]:
    """``(tokens, dim)`` of a ``[batch, tokens, dim]`` feature."""
    if point is None or point.shape is None:
        raise ValueError(
            f"Convpass needs the token sequence's shape at {what}: pass example_input= to attach()"
        )
    if len(point.shape) != 3:
        raise ValueError(
            f"Convpass works on token sequences [batch, tokens, dim]; the feature at "
            f"{point.path}:{point.side} has shape {tuple(point.shape)}"
        )
    return int(point.shape[1]), int(point.shape[2])


@register_addin
class Convpass(AddinBase):
    """``scale * up(act(conv3x3(act(down(x)))))`` on a ViT's patch-token grid, added beside a module.

    Place it across a block's attention (and/or MLP), reading the module's input and adding at its
    output — the paper's parallel bypass::

        (Convpass.adapt_across_output, bottleneck=8): ...->{in1}(blocks[0:12].attn){out1}->...

    The ``prefix`` tokens (the class token) go through the convolution as 1x1 maps; the others are laid
    out as a square grid (``tokens - prefix`` must be a square). Settings: ``bottleneck`` (default 8),
    ``scale`` (default 1.0), ``prefix`` (default 1). ``up`` starts at zero, so the model is unchanged at
    attach; ``down`` and the convolution start Xavier-uniform, as in the paper.
    """

    offers = ("adapt_across_output", "adapt_across_input")  # the methods a string may name

    def __init__(
        self,
        point: PointInfo,
        source_point: PointInfo | None = None,
        bottleneck: int = 8,
        scale: float = 1.0,
        prefix: int = 1,
    ) -> None:
        super().__init__()
        positive_int(bottleneck, "bottleneck", "Convpass")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"Convpass scale must be a finite number, got {scale!r}")
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
            raise ValueError(f"Convpass prefix must be a non-negative integer, got {prefix!r}")
        tokens, dim_in = _tokens(source_point or point, "its {in} point")
        out_tokens, dim_out = _tokens(point, "its {out} point")
        if tokens != out_tokens:
            raise ValueError(
                f"Convpass adds its branch to a sequence of {out_tokens} tokens but reads "
                f"{tokens}: both points need the same tokens"
            )
        side = math.isqrt(tokens - prefix) if tokens > prefix else 0
        if side * side != tokens - prefix or side == 0:
            raise ValueError(
                f"Convpass lays the {tokens - prefix} patch tokens "
                f"(of {tokens}, prefix {prefix}) "
                f"out as a square grid, which they do not fill; set prefix= to the number of "
                f"class/register tokens"
            )
        self.grid, self.prefix, self.scale = side, prefix, float(scale)
        self.down = nn.Linear(dim_in, bottleneck)
        self.conv = nn.Conv2d(bottleneck, bottleneck, 3, padding=1)
        self.up = nn.Linear(bottleneck, dim_out)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def extra_repr(self) -> str:
        return f"grid={self.grid}x{self.grid}, prefix={self.prefix}, scale={self.scale:g}"

    @staticmethod
    def _act(x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)  # QuickGELU, the paper's activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self._act(self.down(x))
        patches = h[:, self.prefix :].transpose(1, 2).reshape(b, -1, self.grid, self.grid)
        patches = self.conv(patches).flatten(2).transpose(1, 2)
        parts = [patches]
        if self.prefix:  # each prefix token as a 1x1 map: only the kernel's centre sees it
            centre = self.conv.weight[:, :, 1, 1]
            parts.insert(0, F.linear(h[:, : self.prefix], centre, self.conv.bias))
        h = self._act(torch.cat(parts, dim=1))
        return self.up(h) * self.scale

    def adapt_across_output(self, module: nn.Module, inputs: tuple, outputs: torch.Tensor) -> torch.Tensor:
        return outputs + self(self.inputs_cache)

    def adapt_across_input(self, module: nn.Module, inputs: tuple) -> torch.Tensor:
        return inputs[0] + self(self.inputs_cache)
