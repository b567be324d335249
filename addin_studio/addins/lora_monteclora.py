"""Old path of ``addins/lora/monteclora.py`` (MonteCLoRA), kept as a re-export."""

from .lora.monteclora import MonteCLoRASampler, MonteCLoRAVariant, check_monteclora  # noqa: F401
