"""Hook objects: one forward pre-hook or forward hook per insertion point, running its actions in order.

They are small picklable classes rather than closures, so an attached model can still be pickled,
deep-copied and saved with ``torch.save``.
"""
from __future__ import annotations

from typing import Any

from torch import nn


class CacheAction:
    """``{in}``: store the feature at this point in ``addin.inputs_cache``."""

    __slots__ = ("addin",)

    def __init__(self, addin: nn.Module) -> None:
        self.addin = addin

    def pre(self, module: nn.Module, args: tuple) -> tuple:
        self.addin.inputs_cache = args[0] if args else None
        return args

    def post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        self.addin.inputs_cache = output
        return output


class RunAction:
    """``{inout}`` or ``{out}``: run the add-in's method and use its result."""

    __slots__ = ("addin", "fn", "across", "label")

    def __init__(self, addin: nn.Module, method: str, across: bool, label: str) -> None:
        self.addin = addin
        self.fn = getattr(addin, method)
        self.across = across
        self.label = label

    def _check_cache(self) -> None:
        if self.addin.inputs_cache is None:
            raise RuntimeError(f"{self.label}: the {{in}} point did not run before the {{out}} point in "
                               f"this forward pass, so the add-in has no input")

    def pre(self, module: nn.Module, args: tuple) -> tuple:
        if self.across:
            self._check_cache()
            try:
                result = self.fn(module, args)
            finally:
                self.addin.inputs_cache = None  # release the activation as soon as it is used
        else:
            result = self.fn(module, args)
        if result is None:
            return args
        if isinstance(result, tuple):
            return result
        return (result,) + args[1:]

    def post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self.across:
            self._check_cache()
            try:
                result = self.fn(module, args, output)
            finally:
                self.addin.inputs_cache = None
        else:
            result = self.fn(module, args, output)
        return output if result is None else result


class PreHook:
    """Registered with ``register_forward_pre_hook``."""

    __slots__ = ("actions",)

    def __init__(self) -> None:
        self.actions: list = []

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        for action in self.actions:
            args = action.pre(module, args)
        return args


class PostHook:
    """Registered with ``register_forward_hook``."""

    __slots__ = ("actions",)

    def __init__(self) -> None:
        self.actions: list = []

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        for action in self.actions:
            output = action.post(module, args, output)
        return output
