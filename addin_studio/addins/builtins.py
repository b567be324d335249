"""Imports every built-in add-in module so that they register themselves."""

from __future__ import annotations

from . import adapter, adaptformer, convpass, fact, ia3, identity, lora, prefix, ssf, vpt  # noqa: F401  (each registers its add-ins)
from . import trainable_tokens  # noqa: F401
