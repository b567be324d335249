"""Add-ins: the base class, the registry and the built-ins."""

from .base import (
    AddinBase,
    PointInfo,
    forward_method,
    hook_method,
    is_hook_method,
    methods_for,
    weight_method,
)
from .registry import available_addins, get_addin, register_addin

__all__ = [
    "AddinBase",
    "PointInfo",
    "available_addins",
    "forward_method",
    "get_addin",
    "hook_method",
    "is_hook_method",
    "methods_for",
    "register_addin",
    "weight_method",
]
