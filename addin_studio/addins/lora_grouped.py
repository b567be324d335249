# ruff: noqa: F401  (a re-export module: its imports are its content)
"""Old path of ``addins/lora/grouped.py`` (PEFT's grouped-conv LoRA), kept as a re-export."""

from .lora.grouped import (
    check_grouped,
    grouped_branch,
    grouped_shapes,
    is_grouped_peft,
    peft_dora_delta,
)
