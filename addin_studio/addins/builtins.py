"""Imports every built-in add-in module so that they register themselves."""
from __future__ import annotations

import importlib

# Listed explicitly (never from user input). Modules that are not written yet are skipped.
_BUILTIN_MODULES = ("identity", "lora", "adapter", "adaptformer", "ssf", "vpt", "ia3", "convpass")

for _name in _BUILTIN_MODULES:
    try:
        importlib.import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only while the library grows
        if exc.name != f"{__package__}.{_name}":
            raise
