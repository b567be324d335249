"""Old path of ``addins/lora/velora.py`` (VeLoRA), kept as a re-export."""
from .lora.velora import (VELORA_INITS, VeloraProjection, VeloraVariant, batch_projection,  # noqa: F401
                          check_velora, group_dim, initial_projection, normalized)
