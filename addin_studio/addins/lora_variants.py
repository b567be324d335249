# ruff: noqa: F401  (a re-export module: its imports are its content)
"""Old path of LoRA's shared variant math (now ``addins/lora/inits.py`` and ``addins/lora/dora.py``), kept
as a re-export."""

from __future__ import annotations

from .lora.dora import dora_norm, dora_view
from .lora.inits import (
    BASE_MOVING_INITS,
    INITS,
    gaussian_init,
    lora_scaling,
    matrix_of,
    svd_init,
)
from .lora.variant import make_variant


def check_variant_settings(rslora: object, bias: object, init: object, dora: object) -> str:
    """Validate the variant settings; return the init's canonical name. Raises ``ValueError``."""
    return make_variant({"rslora": rslora, "bias": bias, "init": init, "dora": dora}).init
