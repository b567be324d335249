"""Identity: an add-in that changes nothing (for testing placements and measuring hook overhead)."""

from __future__ import annotations

from typing import Any

from .base import AddinBase
from .registry import register_addin


@register_addin
class Identity(AddinBase):
    """Returns its input unchanged; ``adapt_across_*`` add nothing."""

    offers = ("adapt_output", "adapt_input", "adapt_across_output", "adapt_across_input")

    def forward(self, x: Any) -> Any:
        return x

    def adapt_input(self, module, inputs):
        return None

    def adapt_output(self, module, inputs, outputs):
        return outputs

    def adapt_across_input(self, module, inputs):
        return None

    def adapt_across_output(self, module, inputs, outputs):
        return outputs
