"""The models and add-ins of ZhiJian's "Customize Pre-trained Models" tutorial, ready to use.

``TutorialMLP`` has the tutorial's ``fc1``/``fc2``/``fc3`` layers (sized for 8x8 digits by default)
and ``MLPAddin`` is the tutorial's add-in, sized from the point it is placed at.
"""

from __future__ import annotations

import torch
from torch import nn

from .addins.base import AddinBase, PointInfo


class TutorialMLP(nn.Module):
    """Three-layer perceptron: ``fc1 -> ReLU -> fc2 -> ReLU -> fc3``."""

    def __init__(self, in_features: int = 64, hidden: int = 256, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.size(0), -1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class MLPAddin(AddinBase):
    """The tutorial's bottleneck add-in: ``Linear(d, reduction_dim) -> ReLU -> Linear(.., output_size)``.

    ``d`` is the feature size at the point it reads (the ``{in}`` point, or the ``{inout}`` point).
    """

    def __init__(
        self,
        point: PointInfo,
        source_point: PointInfo | None = None,
        reduction_dim: int = 16,
        output_size: int | None = None,
    ) -> None:
        super().__init__()
        if reduction_dim < 1:
            raise ValueError(f"reduction_dim must be at least 1, got {reduction_dim}")
        reads = source_point if source_point is not None else point
        if reads.shape is None:
            raise ValueError("MLPAddin needs the feature shape: pass example_input= to attach()")
        embed_dim = reads.shape[-1]
        writes = point.shape[-1] if point.shape is not None else embed_dim
        self.fc1 = nn.Linear(embed_dim, reduction_dim)
        self.fc2 = nn.Linear(reduction_dim, output_size or writes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))

    def adapt_input(self, module, inputs):
        return self.forward(inputs[0])

    def adapt_output(self, module, inputs, outputs):
        return self.forward(outputs)

    def adapt_across_input(self, module, inputs):
        return inputs[0] + self.forward(self.inputs_cache)

    def adapt_across_output(self, module, inputs, outputs):
        return outputs + self.forward(self.inputs_cache)
