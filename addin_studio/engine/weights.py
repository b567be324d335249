"""Weight methods: make ``module.<param>`` return an add-in's function of the stored parameter.

The module's class is swapped for a subclass (same name) whose ``<param>`` is a property computing
``fn(module, W)`` from ``module._parameters[<param>]``. The stored parameter itself is never changed,
so ``state_dict``, ``named_parameters`` and optimizers see exactly the base weight under its usual
name, and removing the property (detach, merge) leaves the weight bit for bit as it was. Unlike
``torch.nn.utils.parametrize`` (which renames the weight to ``parametrizations.weight.original`` and
refuses to pickle), an adapted model can be pickled, deep-copied and saved with ``torch.save``.
"""
from __future__ import annotations

from typing import Any, Callable, cast

import torch
from torch import nn

_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}
_ADAPTERS = "_addin_weight_fns"  # instance attribute: {param name: [WeightAction, ...]}


class WeightAction:
    """One weight method bound to its add-in: ``addin.<method>(module, weight)``."""

    __slots__ = ("addin", "method", "label")

    def __init__(self, addin: nn.Module, method: str, label: str) -> None:
        self.addin = addin
        self.method = method
        self.label = label

    def __call__(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        return getattr(self.addin, self.method)(module, weight)

    def __getstate__(self) -> tuple:
        return self.addin, self.method, self.label

    def __setstate__(self, state: tuple) -> None:
        self.addin, self.method, self.label = state


def _property(name: str) -> property:
    def get(self: nn.Module) -> torch.Tensor:
        weight = cast(torch.Tensor, self._parameters[name])
        for action in self.__dict__[_ADAPTERS][name]:
            weight = action(self, weight)
        return weight

    return property(get, doc=f"the adapted '{name}' (stored as _parameters['{name}'])")


def _rebuild(base: type, names: tuple[str, ...]) -> nn.Module:
    return object.__new__(_adapted_class(base, names))


def _reduce_ex(self: nn.Module, protocol: int) -> tuple:
    cls = type(self)
    return _rebuild, (getattr(cls, "__addin_base__"), getattr(cls, "__addin_names__")), self.__dict__.copy()


def _adapted_class(base: type, names: tuple[str, ...]) -> type:
    key = (base, names)
    cls = _CLASSES.get(key)
    if cls is None:
        body: dict[str, Any] = {name: _property(name) for name in names}
        body.update(__addin_base__=base, __addin_names__=names, __reduce_ex__=_reduce_ex,
                    __module__=base.__module__, __qualname__=base.__qualname__)
        cls = type(base.__name__, (base,), body)
        _CLASSES[key] = cls
    return cls


def base_class(module: nn.Module) -> type:
    """The module's own class, whether or not a weight method is installed on it."""
    return getattr(type(module), "__addin_base__", type(module))


def _retype(module: nn.Module) -> None:
    current = type(module)
    if "__addin_base__" not in current.__dict__ and hasattr(current, "__addin_base__"):
        raise RuntimeError(f"'{current.__name__}' was wrapped into another class (e.g. by FSDP's "
                           f"fully_shard) after a weight method was installed on it; wrap the model "
                           f"before attaching, or detach before wrapping")
    fns = module.__dict__.get(_ADAPTERS, {})
    names = tuple(sorted(n for n, actions in fns.items() if actions))
    base = base_class(module)
    if names:
        module.__class__ = _adapted_class(base, names)
    else:
        module.__class__ = base
        module.__dict__.pop(_ADAPTERS, None)


def check_adaptable(module: nn.Module, name: str) -> str | None:
    """Why ``module.<name>`` cannot be adapted by a weight method, or None when it can."""
    if name not in module._parameters or module._parameters[name] is None:
        return f"{type(module).__name__} has no parameter '{name}'"
    own = getattr(base_class(module), name, None)
    if isinstance(own, property):  # e.g. torch.nn.utils.parametrize already owns it
        return f"{type(module).__name__}.{name} is already a property (parametrized?)"
    if getattr(module, "sparse", False) is True and isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        # its backward gives the weight a sparse gradient, which no weight method can pass on
        return (f"{type(module).__name__}(sparse=True) gives its weight a sparse gradient, which cannot flow "
                f"through a weight method; build it with sparse=False")
    return None


def add_weight_action(module: nn.Module, name: str, action: Callable, index: int | None = None) -> None:
    """Make ``module.<name>`` pass through ``action`` (after those already there, or at ``index``)."""
    fns = module.__dict__.setdefault(_ADAPTERS, {})
    chain = fns.setdefault(name, [])
    chain.insert(len(chain) if index is None else min(index, len(chain)), action)
    _retype(module)


def remove_weight_action(module: nn.Module, name: str, action: Callable) -> None:
    """Undo :func:`add_weight_action`; with none left the module gets its own class back."""
    fns = module.__dict__.get(_ADAPTERS, {})
    actions = fns.get(name, [])
    if action in actions:
        actions.remove(action)
    if not actions:
        fns.pop(name, None)
    _retype(module)


def has_weight_action(module: nn.Module, name: str, action: Callable) -> bool:
    return action in module.__dict__.get(_ADAPTERS, {}).get(name, [])


def weight_actions(module: nn.Module, name: str) -> list[Callable]:
    """The weight methods ``module.<name>`` passes through now, in order."""
    return list(module.__dict__.get(_ADAPTERS, {}).get(name, []))
