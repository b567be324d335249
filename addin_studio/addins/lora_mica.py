"""Old path of ``addins/lora/mica.py`` (MiCA), kept as a re-export."""

from .lora.mica import MicaVariant, mica_init  # noqa: F401
