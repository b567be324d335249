"""Add-ins: the base class, the registry and the built-ins."""
from .base import AddinBase, PointInfo, methods_for, weight_method
from .registry import available_addins, get_addin, register_addin

__all__ = ["AddinBase", "PointInfo", "available_addins", "get_addin", "methods_for", "register_addin",
           "weight_method"]
