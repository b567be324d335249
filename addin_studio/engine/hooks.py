"""Hook objects: one forward pre-hook or forward hook per insertion point, running its actions in order.

They are small picklable classes rather than closures, so an attached model can still be pickled,
deep-copied and saved with ``torch.save``.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..config import ConfigError, format_path


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
        lines = [f"  {label}: module '{format_path(path)}' did not run"
                 for path, side in missing for label in self.expected[(path, side)]]
        raise ConfigError(
            f"{len(lines)} add-in placement(s) did nothing in this forward pass of {self.root_class}, "
            f"because their module never ran as a module:\n" + "\n".join(lines),
            hint="a layer whose weight its parent reads directly (F.linear(x, layer.weight)) never runs; "
                 "place a weight method there instead, e.g. (LoRA.adapt_weight) — strategies.lora_all/lora "
                 "choose it when given example_input= — and pass example_input= to attach() to have "
                 "this checked at attach time")
