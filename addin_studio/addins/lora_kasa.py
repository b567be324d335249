"""Old path of ``addins/lora/kasa.py`` (KaSA), kept as a re-export."""

from .lora.kasa import KasaVariant, check_kasa, kasa_loss, truncated  # noqa: F401
