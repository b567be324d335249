"""Addin Studio: customize pre-trained PyTorch models with add-ins placed by config strings.

>>> import addin_studio as studio
>>> cfg = studio.parse("(MLPAddin.adapt_input): ...->{inout1}(fc2)->...")
"""
from __future__ import annotations

from typing import Any

from .addins import AddinBase, PointInfo, available_addins, get_addin, methods_for, register_addin
from .config import Config, ConfigError, Placement, Point, format_path, parse
from .engine import Attachment, attach
from .graph import ModuleGraph, ModuleNode, trace
from .params import count_parameters, summary_line, trainable_table

__version__ = "0.1.0"

__all__ = [
    "AddinBase", "Attachment", "Config", "ConfigError", "ModuleGraph", "ModuleNode", "Placement",
    "Point", "PointInfo", "Studio", "Trainer", "attach", "available_addins", "count_parameters",
    "format_path", "from_peft", "get_addin", "init_empty_weights", "load", "materialize", "methods_for",
    "parse", "register_addin",
    "strategies", "summary_line", "trace", "trainable_table",
]

# Heavier parts load on first use so `import addin_studio` stays fast and Jupyter-free.
_LAZY = {
    "Trainer": ("addin_studio.train", "Trainer"),
    "Studio": ("addin_studio.widget", "Studio"),
    "load": ("addin_studio.checkpoint", "load"),
    "from_peft": ("addin_studio.checkpoint", "from_peft"),
    "materialize": ("addin_studio.bigmodel", "materialize"),
    "init_empty_weights": ("addin_studio.bigmodel", "init_empty_weights"),
    "strategies": ("addin_studio.strategies", None),
    "data": ("addin_studio.data", None),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'addin_studio' has no attribute {name!r}")
