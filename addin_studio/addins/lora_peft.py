"""Old path of ``addins/lora/peft.py`` (LoRA's PEFT form), kept as a re-export."""

from .lora.peft import MHA_PEFT_VERSION, MHA_REFUSAL, LoraPeft  # noqa: F401
