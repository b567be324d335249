"""Old path of the PEFT sub-configs of LoRA's variants (now each variant's ``peft_fields`` /
``peft_tensors`` in ``addins/lora/``, helpers in ``addins/lora/peft_variants.py``), kept as a re-export."""

from __future__ import annotations

from typing import Any

from .lora.peft_variants import as_json  # noqa: F401


def variant_fields(addin: Any) -> dict[str, Any]:
    """The ``kasa_config`` / ``velora_config`` / ``monteclora_config`` fields of one LoRA (hashable)."""
    fields = addin.variant.peft_fields()
    return {k: fields[k] for k in ("kasa_config", "velora_config", "monteclora_config")}


def extra_tensors(addin: Any) -> dict[str, Any]:
    """``{PEFT suffix: tensor}`` of the extra tensors this LoRA's variant has."""
    return addin.variant.peft_tensors(addin)
