"""Forward methods: an add-in's ``method(module, forward, args, kwargs)`` runs in place of ``module.forward``.

The engine sets an instance attribute ``module.forward`` (a picklable :class:`ForwardAction`), which
``nn.Module.__call__`` finds before the class's ``forward``; hooks registered on the module still run
around it. The module's class, parameters and ``state_dict`` are untouched, and removing the attribute
(detach) gives the class's own forward back. One forward method per module at a time.
"""

from __future__ import annotations

from typing import Any

from torch import nn

_ATTR = "forward"


class ForwardAction:
    """``module(*args, **kwargs)`` -> ``addin.<method>(module, module's own forward, args, kwargs)``."""

    __slots__ = ("module", "addin", "method", "label", "enabled")

    def __init__(self, module: nn.Module, addin: nn.Module, method: str, label: str) -> None:
        self.module = module
        self.addin = addin
        self.method = method
        self.label = label
        self.enabled = True  # switched off only while attach looks for the placement that breaks a forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        own = type(self.module).forward.__get__(self.module)
        if not self.enabled:
            return own(*args, **kwargs)
        return getattr(self.addin, self.method)(self.module, own, args, kwargs)

    def __getstate__(self) -> tuple:
        return self.module, self.addin, self.method, self.label

    def __setstate__(self, state: tuple) -> None:
        self.module, self.addin, self.method, self.label = state
        self.enabled = True


def check_replaceable(module: nn.Module) -> str | None:
    """Why ``module``'s forward cannot be replaced by a forward method, or None when it can."""
    current = module.__dict__.get(_ATTR)
    if isinstance(current, ForwardAction):
        return f"its forward is already replaced by {current.label}"
    if current is not None:
        return "its forward is already replaced by an instance attribute (a monkeypatch?)"
    return None


def add_forward_action(module: nn.Module, action: ForwardAction) -> None:
    problem = check_replaceable(module)
    if problem:
        raise RuntimeError(f"cannot install {action.label}: {problem}")
    object.__setattr__(module, _ATTR, action)


def remove_forward_action(module: nn.Module, action: ForwardAction) -> None:
    """Undo :func:`add_forward_action` (only if ``action`` is still the one installed)."""
    if module.__dict__.get(_ATTR) is action:
        del module.__dict__[_ATTR]
