"""Adapter (Houlsby et al.): a residual bottleneck ``x + up(act(down(x)))``, ``up`` zero-initialized."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._sizing import channels_back, channels_last, feature_layout, positive_int
from .base import AddinBase, PointInfo
from .registry import register_addin

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


def _without(shape: tuple, channel_first: bool) -> tuple:
    """The shape without its feature dimension."""
    dim = 1 if channel_first else len(shape) - 1
    return tuple(shape[:dim]) + tuple(shape[dim + 1 :])


class Bottleneck(AddinBase):
    """``up(act(down(x)))`` over the feature dimension (last, or 1 for 4-D conv maps).

    ``down`` maps the ``{in}`` feature's width to ``bottleneck``, ``up`` maps back to the ``{out}``
    feature's width and starts at zero, so the branch adds nothing at attach.
    """

    def __init__(
        self, point: PointInfo, source_point: PointInfo | None = None, bottleneck: int = 64, act: str = "relu"
    ) -> None:
        super().__init__()
        name = type(self).__name__
        out_features, self.channel_first = feature_layout(point, name)
        in_features, self.in_channel_first = feature_layout(source_point or point, name)
        if (
            source_point is not None
            and source_point.shape is not None
            and _without(source_point.shape, self.in_channel_first)
            != _without(point.shape, self.channel_first)
        ):
            raise ValueError(
                f"{name} adds a branch of the feature at "
                f"{source_point.path}:{source_point.side} "
                f"{tuple(source_point.shape)} to the one at {point.path}:{point.side} "
                f"{tuple(point.shape)}: apart from the channels their shapes must match"
            )
        positive_int(bottleneck, "bottleneck", name)
        if act not in ACTIVATIONS:
            raise ValueError(f"{name} act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
        self.act_name = act
        self.act = ACTIVATIONS[act]
        self.down = nn.Linear(in_features, bottleneck)
        self.up = nn.Linear(bottleneck, out_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def _branch(self, x: torch.Tensor, channel_first: bool, out_channel_first: bool) -> torch.Tensor:
        h = self.up(self.act(self.down(channels_last(x, channel_first))))
        return channels_back(h, out_channel_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The branch alone, for a feature laid out like the ``{in}`` point's."""
        return self._branch(x, self.in_channel_first, self.channel_first)

    def extra_repr(self) -> str:
        return f"act={self.act_name}"


@register_addin
class Adapter(Bottleneck):
    """Houlsby adapter: ``x + up(act(down(x)))`` on the feature at its point.

    ``adapt_output`` (after a module, e.g. ``(blocks[0:12].mlp){inout1}``) or ``adapt_input`` (before
    one); ``adapt_across_*`` add the branch of the ``{in}`` feature at the ``{out}`` point. Settings:
    ``bottleneck`` (width, default 64), ``act`` (relu, gelu, silu, tanh).
    """

    # the across pair is AddinBase's: x + branch(the {in} feature)
    offers = ("adapt_output", "adapt_input", "adapt_across_output", "adapt_across_input")

    def adapt_input(self, module: nn.Module, inputs: tuple) -> torch.Tensor:
        x = inputs[0]
        return x + self._branch(x, self.channel_first, self.channel_first)

    def adapt_output(self, module: nn.Module, inputs: tuple, outputs: torch.Tensor) -> torch.Tensor:
        return outputs + self._branch(outputs, self.channel_first, self.channel_first)
