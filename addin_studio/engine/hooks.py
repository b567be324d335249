"""Hook objects: one forward pre-hook or forward hook per insertion point, running its actions in order.

They are small picklable classes rather than closures, so an attached model can still be pickled,
deep-copied and saved with ``torch.save``.

Activation checkpointing (``torch.utils.checkpoint``, timm's ``set_grad_checkpointing()``, transformers'
``gradient_checkpointing_enable()``) runs a checkpointed block's forward again during the backward pass,
hooks included. An ``{in}`` and ``{out}`` inside the same block simply run again; an ``{out}`` whose
``{in}`` lies outside the recomputed block finds the cache already consumed, so the ``{out}`` action keeps
the feature it consumed (``RunAction.last``) and uses it again when it runs inside a backward pass.
``last`` is dropped when the ``{in}`` point runs in the next forward pass, and by ``detach()``; a cache
filled by a recomputed ``{in}`` is dropped when the backward pass ends.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ConfigError, format_path


def recomputing() -> bool:
    """Whether a forward pass runs inside a backward pass: activation checkpointing recomputing a block."""
    if torch.compiler.is_compiling():  # dynamo traces the forward pass itself; keep its graph unbroken
        return False
    return torch._C._current_graph_task_id() != -1


def _non_reentrant_recomputation() -> bool:
    """Whether the running recomputation is ``checkpoint(..., use_reentrant=False)``'s, which only needs
    the values of the original forward pass (its autograd graph stays that of the original pass)."""
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return hooks is not None and "_recomputation_hook" in getattr(hooks[0], "__qualname__", "")


class CacheAction:
    """``{in}``: store the feature at this point in ``addin.inputs_cache``."""

    __slots__ = ("addin", "run")

    def __init__(self, addin: Any, run: "RunAction | None" = None) -> None:
        self.addin = addin
        self.run = run  # the matching {out} action, whose kept feature a new forward pass releases

    def _store(self, feature: Any) -> None:
        self.addin.inputs_cache = feature
        if not recomputing():
            if self.run is not None:
                self.run.last = None
        else:  # a recomputed {in} whose {out} may lie outside the block: release it when backward ends
            torch.autograd.Variable._execution_engine.queue_callback(_ClearCache(self.addin))

    def pre(self, module: nn.Module, args: tuple) -> tuple:
        self._store(args[0] if args else None)
        return args

    def post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        self._store(output)
        return output


class _ClearCache:
    __slots__ = ("addin",)

    def __init__(self, addin: Any) -> None:  # an add-in module (holds inputs_cache)
        self.addin = addin

    def __call__(self) -> None:
        self.addin.inputs_cache = None


class RunAction:
    """``{inout}`` or ``{out}``: run the add-in's method and use its result."""

    __slots__ = ("addin", "fn", "across", "label", "last")

    def __init__(self, addin: Any, method: str, across: bool, label: str) -> None:
        self.addin = addin
        self.fn = getattr(addin, method)
        self.across = across
        self.label = label
        self.last: Any = None  # the {in} feature the last forward pass consumed (for recomputation)

    def __getstate__(self) -> dict:
        state = {k: getattr(self, k) for k in self.__slots__}
        state["last"] = None  # never pickle or deep-copy an activation
        return state

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def _check_cache(self) -> None:
        if self.addin.inputs_cache is None and self.last is not None and recomputing():
            # a checkpointed block re-runs without its {in} point
            if not _non_reentrant_recomputation():
                raise RuntimeError(
                    f"{self.label}: activation checkpointing with use_reentrant=True recomputes a block "
                    f"that holds this {{out}} point but not its {{in}} point, and would lose the gradient "
                    f"through the add-in's input. Use use_reentrant=False (the default of transformers' "
                    f"gradient_checkpointing_enable()), or put {{in}} and {{out}} in the same block"
                )
            self.addin.inputs_cache = self.last
        if self.addin.inputs_cache is None:
            raise RuntimeError(
                f"{self.label}: the {{in}} point did not run before the {{out}} point in "
                f"this forward pass, so the add-in has no input"
            )

    def _release(self) -> None:
        """Drop the cache once used (keeping it in ``last`` while training, for recomputation)."""
        cache = self.addin.inputs_cache
        self.addin.inputs_cache = None
        if not recomputing():
            self.last = cache if torch.is_grad_enabled() or getattr(self.addin, "training", False) else None

    def pre(self, module: nn.Module, args: tuple) -> tuple:
        if self.across:
            self._check_cache()
            try:
                result = self.fn(module, args)
            finally:
                self._release()
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
                self._release()
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


class _Seen:
    """A forward pre-hook that records that its point's module ran."""

    __slots__ = ("check", "point")

    def __init__(self, check: "FirstForwardCheck", point: tuple[str, str]) -> None:
        self.check = check
        self.point = point

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.check.seen.add(self.point)


class FirstForwardCheck:
    """Without a traced example input, the first forward pass proves that every hook runs.

    It watches the hooked modules and, when the model's forward ends, raises a ConfigError listing the
    add-ins whose modules did not run (a layer whose weight its parent reads directly never runs as a
    module). Once a forward pass has run them all it removes its hooks: later passes pay nothing.
    """

    def __init__(self, expected: dict[tuple[str, str], list[str]], root_class: str) -> None:
        self.expected = expected  # point -> labels of the placements that need it
        self.root_class = root_class
        self.seen: set[tuple[str, str]] = set()
        self.handles: list = []

    def install(self, model: nn.Module, modules: dict[str, nn.Module]) -> None:
        for point in self.expected:
            self.handles.append(modules[point[0]].register_forward_pre_hook(_Seen(self, point)))
        self.handles.append(model.register_forward_hook(self))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __call__(self, model: nn.Module, args: tuple, output: Any) -> None:
        missing = [p for p in self.expected if p not in self.seen]
        self.seen = set()
        if not missing:
            self.remove()
            return
        lines = [
            f"  {label}: module '{format_path(path)}' did not run"
            for path, side in missing
            for label in self.expected[(path, side)]
        ]
        raise ConfigError(
            f"{len(lines)} add-in placement(s) did nothing in this forward pass of {self.root_class}, "
            f"because their module never ran as a module:\n" + "\n".join(lines),
            hint="a layer whose weight its parent reads directly (F.linear(x, layer.weight)) never runs; "
            "place a weight method there instead, e.g. (LoRA.adapt_weight) — strategies.lora_all/lora "
            "choose it when given example_input= — and pass example_input= to attach() to have "
            "this checked at attach time",
        )
