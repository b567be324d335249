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

    Attributes:
        module: The module the point is before or after.
        side: ``"pre"`` (before the module) or ``"post"`` (after it).
        shape: The feature's shape at that point from the traced example input (the first input tensor
            for ``pre``, the output for ``post``), or ``None`` when no example input was given.
        path: The module's dotted path in the model (``""`` when not known).
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

    ``offers`` (class attribute) declares the methods a config string may name: a tuple of method
    names, or ``None`` (the default, the tutorial's pattern) for every hook method the class has, these
    four included. A built-in that offers only ``adapt_output`` says ``offers = ("adapt_output",)``;
    the others stay plain inherited methods that no string can reach. Each name must be a hook method
    of the class (checked when the class is defined); a subclass that defines new hook methods of its
    own adds them to what its parent offers.

    ``peft`` (class attribute): the add-in's Hugging Face PEFT form (a ``PeftMapping``), or ``None``.

    Attributes:
        inputs_cache: The feature stored at the matching ``{in}`` point (``None`` outside a forward pass
            of an ``{in}``...``{out}`` placement).
    """

    peft: ClassVar["PeftMapping | None"] = None
    offers: ClassVar[tuple[str, ...] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        offers = cls.__dict__.get("offers")
        if offers is None:
            inherited = getattr(cls, "offers", None)
            own = [n for n in cls.__dict__ if _hook_like(cls, n)]
            if inherited is not None and own:  # a subclass's own hook methods join its parent's
                cls.offers = tuple(dict.fromkeys([*inherited, *own]))
            return
        if isinstance(offers, str) or not all(isinstance(n, str) for n in offers):
            raise TypeError(f"{cls.__name__}.offers must be a tuple of method names, not {offers!r}")
        cls.offers = tuple(offers)
        for name in cls.offers:
            if not _hook_like(cls, name):
                raise TypeError(
                    f"{cls.__name__}.offers names {name!r}, which is not a hook method of "
                    f"{cls.__name__} (a public method named adapt_* or declared with "
                    f"@hook_method, @weight_method or @forward_method)"
                )

    def __init__(self) -> None:
        super().__init__()
        self.inputs_cache: Any = None

    def adapt_input(self, module: nn.Module, inputs: tuple) -> Any:
        """Run before ``module``: ``self(inputs[0])`` replaces its first input.

        Args:
            module: The module the add-in is placed before.
            inputs: The module's positional inputs.

        Returns:
            The new first input.
        """
        return self(inputs[0])

    def adapt_output(self, module: nn.Module, inputs: tuple, outputs: Any) -> Any:
        """Run after ``module``: ``self(outputs)`` replaces its output.

        Args:
            module: The module the add-in is placed after.
            inputs: The module's positional inputs.
            outputs: The module's output.

        Returns:
            The new output.
        """
        return self(outputs)

    def adapt_across_input(self, module: nn.Module, inputs: tuple) -> Any:
        """Run before ``module`` at an ``{out}`` point: adds ``self(inputs_cache)`` to its first input.

        Args:
            module: The module the ``{out}`` point is before.
            inputs: The module's positional inputs.

        Returns:
            ``inputs[0] + self(self.inputs_cache)``, the new first input.
        """
        return inputs[0] + self(self.inputs_cache)

    def adapt_across_output(self, module: nn.Module, inputs: tuple, outputs: Any) -> Any:
        """Run after ``module`` at an ``{out}`` point: adds ``self(inputs_cache)`` to its output.

        Args:
            module: The module the ``{out}`` point is after.
            inputs: The module's positional inputs.
            outputs: The module's output.

        Returns:
            ``outputs + self(self.inputs_cache)``, the new output.
        """
        return outputs + self(self.inputs_cache)

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["inputs_cache"] = None  # never pickle a cached activation
        return state


_ARITY = {"pre": 2, "post": 3}
WEIGHT_SIDE = "post"  # where a weight method is written in a string: ``(layer){inout1}``


def weight_method(param: str | None = None) -> Callable[[Callable], Callable]:
    """Declare an add-in method a *weight method*: ``method(module, weight) -> weight``.

    Instead of running as a hook, the engine makes ``module.<param>`` return ``method(module, W)``
    (``W`` the stored parameter) for as long as the add-in is attached, so the adaptation holds wherever
    the weight is read — also when the layer is never called as a module (``F.linear(x, qkv.weight)``)
    or when its own ``forward`` transforms the weight (``Conv2dSame``, ``ScaledStdConv2d``). It is written
    at the layer's ``post`` point like an output method. ``param`` names the parameter (default: the
    add-in's ``weight_param(module)`` if it has one, else ``"weight"``).
    """

    def mark(fn: Callable) -> Callable:
        fn.__addin_weight_method__ = True
        fn.__addin_weight_param__ = param
        return fn

    return mark


def is_weight_method(method: Any) -> bool:
    """Whether ``method`` (bound or not) was declared with :func:`weight_method`."""
    return bool(getattr(method, "__addin_weight_method__", False))


FORWARD_SIDE = "pre"  # where a forward method is written in a string: ``{inout1}(module)``


def forward_method(fn: Callable) -> Callable:
    """Declare an add-in method a *forward method*: ``method(module, forward, args, kwargs)``.

    Instead of running as a hook, it replaces the module's forward pass for as long as the add-in is
    attached: ``module(*args, **kwargs)`` returns ``method(module, forward, args, kwargs)``, where
    ``forward`` is the module's own forward (call it to run the original computation). For what a hook
    cannot reach: keyword arguments (a transformers model's ``attention_mask``, its cache) and values
    computed inside ``forward`` (an attention's keys and values). Written at the module's ``pre`` point,
    ``{inout1}(module)``; the module's class is left alone (the engine sets an instance ``forward``).
    """
    fn.__addin_forward_method__ = True
    return fn


def is_forward_method(method: Any) -> bool:
    """Whether ``method`` (bound or not) was declared with :func:`forward_method`."""
    return bool(getattr(method, "__addin_forward_method__", False))


_HOOK_FLAG = "__addin_hook_method__"
_ACROSS_FLAG = "__addin_across_method__"
HOOK_PREFIX = "adapt_"
ACROSS_PREFIX = "adapt_across_"


def hook_method(fn: Callable | None = None, *, across: bool = False) -> Any:
    """Declare a method whose name does not start with ``adapt_`` as a hook method.

    Only hook methods may be named in a config string: the ``adapt_*`` family and methods decorated
    with ``@hook_method``. Private names, dunders and ``nn.Module`` attributes never are::

        class Gate(AddinBase):
            @hook_method
            def gate_output(self, module, inputs, outputs): ...

            @hook_method(across=True)       # reads self.inputs_cache, the feature of an {in} point
            def gate_across_output(self, module, inputs, outputs): ...

    ``across=True`` declares a method that reads the ``{in}`` feature, as ``adapt_across_*`` do: it
    may be written only at the ``{out}`` of an ``{in}...{out}`` pair (see :func:`is_across_method`).
    """

    def mark(f: Callable) -> Callable:
        if not callable(f):
            raise TypeError(f"@hook_method decorates a method, not {type(f).__name__}")
        setattr(f, _HOOK_FLAG, True)
        if across:
            setattr(f, _ACROSS_FLAG, True)
        return f

    return mark(fn) if fn is not None else mark


def is_across_method(method: Any, name: str | None = None) -> bool:
    """Whether a hook method reads the feature stored at an ``{in}`` point (``self.inputs_cache``):
    named ``adapt_across_*`` or declared with ``@hook_method(across=True)``. Such a method runs at the
    ``{out}`` of an ``{in}...{out}`` pair only; every other hook method at an ``{inout}`` point only."""
    name = name if name is not None else getattr(method, "__name__", "")
    return name.startswith(ACROSS_PREFIX) or bool(getattr(method, _ACROSS_FLAG, False))


def _hook_like(cls: type, name: str) -> bool:
    """The naming rule alone: a public, non-``nn.Module`` name of a plain function on ``cls`` that is
    named ``adapt_*`` or declared a hook, weight or forward method (``offers`` not consulted)."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        return False
    if hasattr(nn.Module, name):  # checked now: libraries add methods (transformers' smart_apply)
        return False
    try:
        attr = inspect.getattr_static(cls, name)
    except AttributeError:
        return False
    if not inspect.isfunction(attr):
        return False
    return (
        name.startswith(HOOK_PREFIX)
        or bool(getattr(attr, _HOOK_FLAG, False))
        or is_weight_method(attr)
        or is_forward_method(attr)
    )


def is_hook_method(factory: Any, name: str) -> bool:
    """Whether ``name`` is a hook method of an add-in class (or instance) that a string may name.

    The rule: a public identifier that is not an ``nn.Module`` attribute, defined as a plain function
    on the class (not ``None``, not a property, not an instance attribute or submodule), either named
    ``adapt_*`` or declared with :func:`hook_method`, :func:`weight_method` or :func:`forward_method`,
    and, where the class declares ``offers`` (see :class:`AddinBase`), one of the names it offers.
    """
    cls = factory if isinstance(factory, type) else type(factory)
    if not _hook_like(cls, name):
        return False
    offers = getattr(cls, "offers", None)
    return offers is None or name in offers


def withheld(factory: Any, name: str) -> bool:
    """Whether ``name`` is a hook method by name and form that the class's ``offers`` leaves out (an
    inherited default it does not offer, e.g. ``VPT.adapt_output``): to a string, a method it has not."""
    cls = factory if isinstance(factory, type) else type(factory)
    offers = getattr(cls, "offers", None)
    return offers is not None and name not in offers and _hook_like(cls, name)


def signature_fits(method: Callable, side: str) -> bool:
    """Whether a bound method can be called at a point of ``side`` (pre: 2 args, post: 3).

    A weight method fits the ``post`` point only, and takes ``(module, weight)``; a forward method fits
    the ``pre`` point only, and takes ``(module, forward, args, kwargs)``.
    """
    try:
        sig = inspect.signature(method)
    except (TypeError, ValueError):
        return False
    arity = _ARITY[side]
    if is_weight_method(method):
        if side != WEIGHT_SIDE:
            return False
        arity = 2
    elif is_forward_method(method):
        if side != FORWARD_SIDE:
            return False
        arity = 4
    try:
        sig.bind(*([None] * arity))
    except TypeError:
        return False
    return True


def methods_for(factory: Any, side: str) -> list[str]:
    """Names of the hook methods (see :func:`is_hook_method`) of an add-in class or instance that can
    run at ``side``: the names a config string may write in its header at such a point.

    Args:
        factory: An add-in class or instance.
        side: ``"pre"`` or ``"post"``.

    Returns:
        The method names, sorted.

    Raises:
        ValueError: ``side`` is neither ``"pre"`` nor ``"post"``.
    """
    if side not in _ARITY:
        raise ValueError(f"side must be 'pre' or 'post', not {side!r}")
    cls = factory if isinstance(factory, type) else type(factory)
    names = []
    for name in dir(cls):
        if not is_hook_method(cls, name):
            continue
        fn = inspect.getattr_static(cls, name)
        if signature_fits(
            fn.__get__(object.__new__(cls)) if isinstance(factory, type) else getattr(factory, name), side
        ):
            names.append(name)
    return sorted(names)
