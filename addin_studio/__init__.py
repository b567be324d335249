"""Addin Studio: customize pre-trained PyTorch models with add-ins placed by config strings.

>>> import addin_studio as studio
>>> cfg = studio.parse("(MLPAddin.adapt_input): ...->{inout1}(fc2)->...")

Every public name is imported on first use (PEP 562), so ``import addin_studio`` — and the
``addin-studio --help`` command — do not import torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _aliases

__version__ = "0.2.0"

# modules that moved into subpackages (scale/, app/, sources/) keep their old import paths
_aliases.install()

# public name -> (module, attribute or None for the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "AddinBase": ("addin_studio.addins", "AddinBase"),
    "PointInfo": ("addin_studio.addins", "PointInfo"),
    "available_addins": ("addin_studio.addins", "available_addins"),
    "get_addin": ("addin_studio.addins", "get_addin"),
    "hook_method": ("addin_studio.addins", "hook_method"),
    "methods_for": ("addin_studio.addins", "methods_for"),
    "register_addin": ("addin_studio.addins", "register_addin"),
    "weight_method": ("addin_studio.addins", "weight_method"),
    "forward_method": ("addin_studio.addins", "forward_method"),
    "Config": ("addin_studio.config", "Config"),
    "ConfigError": ("addin_studio.config", "ConfigError"),
    "Placement": ("addin_studio.config", "Placement"),
    "Point": ("addin_studio.config", "Point"),
    "format_path": ("addin_studio.config", "format_path"),
    "parse": ("addin_studio.config", "parse"),
    "Attachment": ("addin_studio.engine", "Attachment"),
    "NamedAdapters": ("addin_studio.named", "NamedAdapters"),
    "attach": ("addin_studio.engine", "attach"),
    "SharedModuleWarning": ("addin_studio.engine.resolve", "SharedModuleWarning"),
    "ModuleGraph": ("addin_studio.graph", "ModuleGraph"),
    "ModuleNode": ("addin_studio.graph", "ModuleNode"),
    "trace": ("addin_studio.graph", "trace"),
    "count_parameters": ("addin_studio.params", "count_parameters"),
    "summary_line": ("addin_studio.params", "summary_line"),
    "trainable_table": ("addin_studio.params", "trainable_table"),
    "Trainer": ("addin_studio.train", "Trainer"),
    "Studio": ("addin_studio.widget", "Studio"),
    "load": ("addin_studio.checkpoint", "load"),
    "from_peft": ("addin_studio.checkpoint", "from_peft"),
    "create_model": ("addin_studio.sources.models", "create_model"),
    "materialize": ("addin_studio.scale.bigmodel", "materialize"),
    "init_empty_weights": ("addin_studio.scale.bigmodel", "init_empty_weights"),
    "image_folder_loaders": ("addin_studio.sources.image_folder", "image_folder_loaders"),
    "strategies": ("addin_studio.strategies", None),
    "data": ("addin_studio.sources.data", None),
}

__all__ = sorted(_EXPORTS)

# Loading the engine through the public API also loads the file formats behind Attachment.save and
# Attachment.export_peft: addin_studio.checkpoint registers them with the engine, which never imports it.
_COMPANIONS = {"addin_studio.engine": "addin_studio.checkpoint"}

if TYPE_CHECKING:  # what static tools and IDEs see; at run time the names load lazily
    from . import strategies
    from .addins import (
        AddinBase,
        PointInfo,
        available_addins,
        forward_method,
        get_addin,
        hook_method,
        methods_for,
        register_addin,
        weight_method,
    )
    from .checkpoint import from_peft, load
    from .config import Config, ConfigError, Placement, Point, format_path, parse
    from .engine import Attachment, attach
    from .engine.resolve import SharedModuleWarning
    from .graph import ModuleGraph, ModuleNode, trace
    from .named import NamedAdapters
    from .params import count_parameters, summary_line, trainable_table
    from .scale.bigmodel import init_empty_weights, materialize
    from .sources import data
    from .sources.image_folder import image_folder_loaders
    from .sources.models import create_model
    from .train import Trainer
    from .widget import Studio


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module_name, attr = _EXPORTS[name]
        module = importlib.import_module(module_name)
        if module_name in _COMPANIONS:
            importlib.import_module(_COMPANIONS[module_name])
        value = module if attr is None else getattr(module, attr)
    else:
        try:  # a submodule such as addin_studio.engine, reached as an attribute
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'addin_studio' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
