"""AddinBase (ZhiJian's add-in pattern), PointInfo and method-signature checks."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from torch import nn

if TYPE_CHECKING:
    from .interop import PeftMapping


@dataclass(frozen=True)
class PointInfo:
    """What a factory learns about the point an add-in is placed at.

    ``shape`` is the feature's shape at that point from the traced example input (the first input
    tensor for ``pre``, the output for ``post``), or ``None`` when no example input was given.
    """

    module: nn.Module
    side: str
    shape: tuple[int, ...] | None
    path: str = ""

    @property
    def features(self) -> int | None:
        """The last dimension of the feature (tokens/Linear) — or channels for 4-D conv maps."""
        if self.shape is None:
            return None
        if len(self.shape) == 4 and not isinstance(self.module, (nn.Linear, nn.LayerNorm)):
            return self.shape[1]
        return self.shape[-1]


class AddinBase(nn.Module):
    """Base class of add-ins.

    Subclasses define ``forward`` (the add-in's computation) and may override the hook methods, which
    take ZhiJian's signatures:

    - ``adapt_input(module, inputs)`` runs before ``module`` (a ``pre`` point); it returns the new input
      (a tensor replaces ``inputs[0]``, a tuple replaces all inputs, ``None`` changes nothing).
    - ``adapt_output(module, inputs, outputs)`` runs after ``module`` (a ``post`` point) and returns the
      new output.
    - ``adapt_across_input`` / ``adapt_across_output``: the same, at an ``{out}`` point, adding
      ``forward(self.inputs_cache)`` — the feature stored at the matching ``{in}`` point.

    ``peft`` (class attribute): the add-in's Hugging Face PEFT form (a ``PeftMapping``), or ``None``.
    """

    peft: ClassVar["PeftMapping | None"] = None

    def __init__(self) -> None:
        super().__init__()
        self.inputs_cache: Any = None

    def adapt_input(self, module: nn.Module, inputs: tuple) -> Any:
        return self(inputs[0])

    def adapt_output(self, module: nn.Module, inputs: tuple, outputs: Any) -> Any:
        return self(outputs)

    def adapt_across_input(self, module: nn.Module, inputs: tuple) -> Any:
        return inputs[0] + self(self.inputs_cache)

    def adapt_across_output(self, module: nn.Module, inputs: tuple, outputs: Any) -> Any:
        return outputs + self(self.inputs_cache)

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["inputs_cache"] = None  # never pickle a cached activation
        return state


_ARITY = {"pre": 2, "post": 3}


def signature_fits(method: Callable, side: str) -> bool:
    """Whether a bound method can be called at a point of ``side`` (pre: 2 args, post: 3)."""
    try:
        sig = inspect.signature(method)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(*([None] * _ARITY[side]))
    except TypeError:
        return False
    return True


def _unbound(factory: Any, name: str) -> Callable | None:
    if isinstance(factory, type):
        fn = getattr(factory, name, None)
        if fn is None or not callable(fn):
            return None
        # strip self for plain functions defined on the class
        return fn.__get__(object.__new__(factory)) if inspect.isfunction(fn) else fn
    fn = getattr(factory, name, None)
    return fn if callable(fn) else None


def methods_for(factory: Any, side: str) -> list[str]:
    """Names of the public hook methods of an add-in class (or instance) that can run at ``side``.

    Methods inherited from ``nn.Module`` (``forward``, ``train``...) are not hook methods.
    """
    if side not in _ARITY:
        raise ValueError(f"side must be 'pre' or 'post', not {side!r}")
    cls = factory if isinstance(factory, type) else type(factory)
    names = []
    for name in dir(cls):
        # hasattr, not a set taken at import: transformers adds methods to nn.Module (smart_apply) later
        if name.startswith("_") or hasattr(nn.Module, name) or name in ("merge", "unmerge"):
            continue
        if isinstance(inspect.getattr_static(cls, name, None), (property, staticmethod, classmethod)):
            continue
        fn = _unbound(factory, name)
        if fn is not None and inspect.ismethod(fn) and signature_fits(fn, side):
            names.append(name)
    return sorted(names)
