# ruff: noqa: F401  (a re-export module: its imports are its content)
"""Old path of ``addins/lora/velora.py`` (VeLoRA), kept as a re-export."""

from .lora.velora import (
    VELORA_INITS,
    VeloraProjection,
    VeloraVariant,
    batch_projection,
    check_velora,
    group_dim,
    initial_projection,
    normalized,
)
