"""VPT (Jia et al.): learnable prompt tokens joined to a ViT-style token sequence ``[batch, tokens, dim]``.

Shallow VPT: one VPT before the first block. Deep VPT: one before every block; each later one
*replaces* the prompts the previous block produced instead of adding more. Prompts go right after the
``prefix`` tokens (the class token), so ``x[:, 0]`` stays the class token.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._sizing import positive_int
from .base import AddinBase, PointInfo
from .registry import register_addin


@register_addin
class VPT(AddinBase):
    """Prompt tokens for a token sequence.

    ``(VPT.adapt_input, num_tokens=10): ...->{inout1}(blocks[0])->...`` (shallow) or
    ``...->{inout1}(blocks[0:12])->...`` (deep). Settings: ``num_tokens`` (default 10), ``prefix``
    (tokens kept in front, default 1 for the class token). The sequence length at the point is read
    from the traced example input: a sequence that already carries ``num_tokens`` extra tokens has its
    prompts replaced.

    Unlike the other built-ins VPT is not an exact identity at attach: prompt tokens take part in
    attention, so the outputs move a little. Use it on class-token models (timm ``global_pool="token"``);
    an average over all tokens would include the prompts.
    """

    offers = ("adapt_input",)  # the methods a string may name

    def __init__(self, point: PointInfo, num_tokens: int = 10, prefix: int = 1) -> None:
        super().__init__()
        positive_int(num_tokens, "num_tokens", "VPT")
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
            raise ValueError(f"VPT prefix must be a non-negative integer, got {prefix!r}")
        if point.shape is None:
            raise ValueError("VPT needs the token sequence's shape: pass example_input= to attach()")
        if len(point.shape) != 3:
            raise ValueError(
                f"VPT works on token sequences [batch, tokens, dim]; the feature at "
                f"{point.path}:{point.side} has shape {tuple(point.shape)}"
            )
        _, self.length, dim = point.shape
        if prefix > self.length:
            raise ValueError(f"VPT prefix {prefix} is longer than the sequence ({self.length} tokens)")
        self.num_tokens = num_tokens
        self.prefix = prefix
        self.prompts = nn.Parameter(torch.empty(num_tokens, dim))
        bound = math.sqrt(6.0 / (num_tokens + dim))  # the paper's Xavier-uniform prompt init
        nn.init.uniform_(self.prompts, -bound, bound)

    def placement_hint(self, graph) -> str:
        """Where VPT may go in a traced model (used in attach's error when a placement breaks the
        forward pass): before the blocks a token sequence ``[batch, tokens, dim]`` runs through."""
        rule = "VPT goes where the whole token sequence [batch, tokens, dim] enters a block"
        for container, n in graph.repeated_groups().items():
            first = f"{container}.0" if container else "0"
            node = graph[first] if first in graph else None
            if node is not None and node.input_shape is not None and len(node.input_shape) == 3:
                return (
                    f"{rule}: {{inout1}}({container}[0]) (shallow) or {{inout1}}({container}[0:{n}]) (deep)"
                )
        return rule

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, prefix={self.prefix}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        if n == self.length:
            keep = x[:, self.prefix :]
        elif n == self.length + self.num_tokens:  # deep VPT: drop the previous block's prompts
            keep = x[:, self.prefix + self.num_tokens :]
        else:
            raise RuntimeError(
                f"VPT expected {self.length} tokens (or {self.length + self.num_tokens} "
                f"with prompts), got {n}"
            )
        prompts = self.prompts.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, : self.prefix], prompts, keep], dim=1)

    def adapt_input(self, module: nn.Module, inputs: tuple) -> torch.Tensor:
        return self(inputs[0])
