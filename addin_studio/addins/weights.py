"""Weight methods: make ``module.<param>`` return an add-in's function of the stored parameter.

The module's class is swapped for a subclass (same name) whose ``<param>`` is a property computing
``fn(module, W)`` from ``module._parameters[<param>]``. The stored parameter itself is never changed,
so ``state_dict``, ``named_parameters`` and optimizers see exactly the base weight under its usual
name, and removing the property (detach, merge) leaves the weight bit for bit as it was. Unlike
``torch.nn.utils.parametrize`` (which renames the weight to ``parametrizations.weight.original`` and
refuses to pickle), an adapted model can be pickled, deep-copied and saved with ``torch.save``.

A weight that is itself computed (a ``torch.nn.utils.parametrize`` parametrization: ``parametrizations.
weight_norm``, ``spectral_norm``, any other; or the legacy ``torch.nn.utils.weight_norm`` hook) is adapted
as computed: the weight method receives what the parametrization gives (:func:`stored_weight`), the
parametrization stays registered, and a merge writes the merged weight back through its
``right_inverse`` only where that gives it back exactly (:func:`write_weight`).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

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
        stored = self._parameters.get(name)
        # a parametrized weight: what its parametrization computes
        weight = stored_weight(self, name) if stored is None else stored
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
        body.update(
            __addin_base__=base,
            __addin_names__=names,
            __reduce_ex__=_reduce_ex,
            __module__=base.__module__,
            __qualname__=base.__qualname__,
        )
        cls = type(base.__name__, (base,), body)
        _CLASSES[key] = cls
    return cls


def base_class(module: nn.Module) -> type:
    """The module's own class, whether or not a weight method is installed on it."""
    return getattr(type(module), "__addin_base__", type(module))


def _retype(module: nn.Module) -> None:
    current = type(module)
    if "__addin_base__" not in current.__dict__ and hasattr(current, "__addin_base__"):
        raise RuntimeError(
            f"'{current.__name__}' was wrapped into another class (e.g. by FSDP's "
            f"fully_shard) after a weight method was installed on it; wrap the model "
            f"before attaching, or detach before wrapping"
        )
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
    if parametrize.is_parametrized(module, name):
        return None  # the method wraps the parametrization's property (see stored_weight)
    if _legacy_hook(module, name) is not None:
        return (
            f"{type(module).__name__}.{name} is recomputed before every forward by the legacy "
            f"{type(_legacy_hook(module, name)).__name__} hook (torch.nn.utils.weight_norm/"
            f"spectral_norm); use the output hook (adapt_output), or re-register it with "
            f"torch.nn.utils.parametrizations."
            f"{'weight_norm' if _is_weight_norm(module, name) else 'spectral_norm'}"
        )
    if name not in module._parameters or module._parameters[name] is None:
        return f"{type(module).__name__} has no parameter '{name}'"
    own = getattr(base_class(module), name, None)
    if isinstance(own, property):  # e.g. torch.nn.utils.parametrize already owns it
        return f"{type(module).__name__}.{name} is already a property (parametrized?)"
    if getattr(module, "sparse", False) is True and isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        # its backward gives the weight a sparse gradient, which no weight method can pass on
        return (
            f"{type(module).__name__}(sparse=True) gives its weight a sparse gradient, which cannot flow "
            f"through a weight method; build it with sparse=False"
        )
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


# -- computed weights: torch.nn.utils.parametrize, and the legacy weight_norm/spectral_norm hooks -------
def _plist(module: nn.Module, name: str) -> Any:
    """The ``ParametrizationList`` computing ``module.<name>``."""
    return cast(Any, module.parametrizations)[name]


def _legacy_hook(module: nn.Module, name: str) -> Any:
    """The legacy ``torch.nn.utils.weight_norm``/``spectral_norm`` forward pre-hook computing ``name``."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, (WeightNorm, SpectralNorm)) and hook.name == name:
            return hook
    return None


def _is_weight_norm(module: nn.Module, name: str) -> bool:
    from torch.nn.utils.weight_norm import WeightNorm

    return isinstance(_legacy_hook(module, name), WeightNorm)


def is_computed(module: nn.Module, name: str) -> bool:
    """Whether ``module.<name>`` is computed from other tensors (a parametrization or a legacy hook)
    rather than stored as a parameter of that name."""
    return module._parameters.get(name) is None and (
        parametrize.is_parametrized(module, name) or _legacy_hook(module, name) is not None
    )


def stored_weight(module: nn.Module, name: str) -> torch.Tensor:
    """``module.<name>`` before any weight method: the parameter, or what its parametrization computes
    (the legacy weight_norm/spectral_norm hooks: the tensor their last forward pre-hook set)."""
    weight = module._parameters.get(name)
    if weight is not None:
        return weight
    if parametrize.is_parametrized(module, name):
        prop = inspect.getattr_static(base_class(module), name)  # the parametrization's own property
        return cast(torch.Tensor, prop.fget(module))
    value = module.__dict__.get(name)
    if _legacy_hook(module, name) is not None and isinstance(value, torch.Tensor):
        return value
    raise KeyError(f"{type(module).__name__} has no parameter '{name}'")


@contextmanager
def still(module: nn.Module) -> Iterator[None]:
    """Reading a parametrized weight runs its parametrization, and spectral_norm's power iteration moves
    its buffers (``_u``, ``_v``) in training mode: inside this, ``module``'s parametrizations' buffers are
    put back as they were on exit (attach and merge read the weight; only the model's forward should
    move them)."""
    plists = getattr(module, "parametrizations", None)
    if not isinstance(plists, nn.Module):
        yield
        return
    saved = {k: b.detach().clone() for k, b in plists.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for k, b in plists.named_buffers():
                if k in saved and b.shape == saved[k].shape:
                    b.copy_(saved[k])


def peek_weight(module: nn.Module, name: str) -> torch.Tensor:
    """:func:`stored_weight`, detached and read without side effects (see :func:`still`)."""
    with still(module), torch.no_grad():
        return stored_weight(module, name).detach()


def stored_tensors(module: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The parameters that hold ``module.<name>``, by their names relative to ``module``: the parameter
    itself, a parametrization's ``parametrizations.<name>.original`` (or ``original0``, ``original1``,
    ...), or the legacy weight_norm's ``<name>_g`` and ``<name>_v``. A merge snapshots these."""
    weight = module._parameters.get(name)
    if weight is not None:
        return {name: weight}
    params = cast(dict[str, torch.Tensor], module._parameters)
    if parametrize.is_parametrized(module, name):
        plist = _plist(module, name)
        if plist.is_tensor:
            return {f"parametrizations.{name}.original": plist.original}
        return {
            f"parametrizations.{name}.original{i}": getattr(plist, f"original{i}")
            for i in range(plist.ntensors)
        }
    if _is_weight_norm(module, name):
        return {f"{name}_g": params[f"{name}_g"], f"{name}_v": params[f"{name}_v"]}
    hook = _legacy_hook(module, name)
    if hook is not None:  # legacy spectral_norm: <name>_orig
        return {f"{name}_orig": params[f"{name}_orig"]}
    raise KeyError(f"{type(module).__name__} has no parameter '{name}'")


def parametrization_names(module: nn.Module, name: str) -> str:
    """What computes ``module.<name>``, for messages: ``_WeightNorm``, ``_SpectralNorm``, ..."""
    if parametrize.is_parametrized(module, name):
        return " -> ".join(type(p).__name__ for p in _plist(module, name))
    hook = _legacy_hook(module, name)
    return f"the legacy {type(hook).__name__} hook" if hook is not None else "nothing"


def write_weight(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Make ``module.<name>`` (before weight methods) read ``value``; the tensors holding it change in place.

    A parameter takes the value. A parametrized weight gets its originals from the parametrization's
    ``right_inverse`` (weight_norm: ``g = ||value||``, ``v = value``), as assigning ``module.<name>``
    does, and so does the legacy weight_norm hook's ``g`` and ``v``; this is exact only where the
    parametrization gives ``value`` back from them, so that is checked (within float rounding) and
    anything else (spectral_norm, whose ``right_inverse`` is not an inverse; a parametrization without
    one) is refused with a ``ValueError`` and the originals left as they were.
    """
    weight = module._parameters.get(name)
    if weight is not None:
        weight.copy_(value)
        return
    tensors = stored_tensors(module, name)
    before = {k: t.detach().clone() for k, t in tensors.items()}
    what = parametrization_names(module, name)
    plist = _plist(module, name) if parametrize.is_parametrized(module, name) else None
    try:
        with torch.no_grad():
            if plist is not None:
                plist.right_inverse(value.detach().clone())
                with still(module):  # (the check must not move spectral_norm's buffers)
                    got = plist()
            elif _is_weight_norm(module, name):
                hook = _legacy_hook(module, name)
                tensors[f"{name}_g"].copy_(torch.norm_except_dim(value, 2, hook.dim))
                tensors[f"{name}_v"].copy_(value)
                got = hook.compute_weight(module)
            else:
                raise ValueError(
                    f"'{name}' is computed by {what} from {', '.join(tensors)}, which has no "
                    f"inverse to take a merged weight back"
                )
    except (RuntimeError, NotImplementedError) as exc:  # e.g. "does not implement right_inverse"
        _restore(tensors, before)
        raise ValueError(f"'{name}' is computed by {what}, which cannot take a weight back ({exc})") from exc
    except ValueError:
        _restore(tensors, before)
        raise
    tol = (
        256 * torch.finfo(value.dtype).eps * (1 + float(value.abs().max()))
        if value.is_floating_point()
        else 0.0
    )
    off = float((got.float() - value.float()).abs().max()) if value.numel() else 0.0
    if off > tol:
        _restore(tensors, before)
        raise ValueError(
            f"'{name}' is computed by {what} from {', '.join(tensors)}, and its right_inverse "
            f"does not give the merged weight back (off by {off:.3g}), so the update cannot be "
            f"folded into them exactly; keep it unmerged (the parametrization stays as it was)"
        )
    if plist is None:  # legacy weight_norm: the attribute its hook sets, up to date now
        setattr(module, name, got)


def _restore(tensors: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, t in tensors.items():
            if t.shape == before[k].shape:
                t.copy_(before[k])
