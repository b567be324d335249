"""GIFt's capability model, producing a :class:`Config` instead of rewriting the model.

A :class:`Strategy` holds *module capabilities* and *parameter capabilities*, each a ``check -> action``
pair. The model's submodules are visited in ``named_modules`` order (parents before children):

- the first module capability whose check matches a module *claims* it: its action returns the
  placements (and kept-trainable parameter names) for that module, and its children are not visited;
- the own parameters of a module no module capability claimed go to the parameter capabilities: the
  first whose check matches decides whether the parameter stays trainable; unmatched parameters are
  frozen (the root module's own parameters are checked too);
- ``constraint_type``: the strategy only applies to models of these types (TypeError otherwise);
- a module reached under several names (shared by several parents) is visited once, under its
  canonical name (the first ``named_modules()`` gives, see :func:`~addin_studio.graph.module_aliases`),
  with its other names in ``info.aliases``: a strategy places one add-in per module object.

Nothing is changed on the model: calling the strategy returns a ``Config`` to ``attach``, show as a
string or draw in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from torch import nn

from ..config import Config, Placement, Point
from ..engine.freezing import pattern_matches
from ..graph import module_aliases


@dataclass(frozen=True)
class ModuleInfo:
    """What a module check sees (its ``class_name`` property is ``type(module).__name__``).

    Attributes:
        path: The dotted path, the module's canonical name.
        name: The last segment of ``path``.
        module: The module.
        parent: The parent module (``None`` for the root).
        aliases: The module's other names when it is shared by several parents.
    """

    path: str
    name: str
    module: nn.Module
    parent: nn.Module | None
    aliases: tuple[str, ...] = ()

    @property
    def class_name(self) -> str:
        return type(self.module).__name__


@dataclass(frozen=True)
class ParamInfo:
    """What a parameter check sees.

    Attributes:
        owner: The owning module's :class:`ModuleInfo`.
        name: The parameter's own name (``"bias"``).
        path: Its full dotted path (``"fc.bias"``).
        param: The parameter tensor.
    """

    owner: ModuleInfo
    name: str
    path: str
    param: nn.Parameter


@dataclass(frozen=True)
class Claim:
    """The result of a module action.

    Attributes:
        placements: Placements to add.
        trainable: Parameter names (or patterns) to keep trainable.
    """

    placements: tuple[Placement, ...] = ()
    trainable: tuple[str, ...] = ()


ModuleCheck = Callable[[ModuleInfo], bool]
ModuleAction = Callable[[ModuleInfo], Claim]
ParamCheck = Callable[[ParamInfo], bool]


@dataclass(frozen=True)
class ModuleCap:
    """A module capability: the first one whose check matches a module claims it.

    Attributes:
        check: ``check(info) -> bool`` on a :class:`ModuleInfo`.
        action: ``action(info) -> Claim`` for a matched module (its submodules are not visited).
    """

    check: ModuleCheck
    action: ModuleAction


@dataclass(frozen=True)
class ParamCap:
    """A parameter capability: the first one whose check matches a parameter decides it.

    Attributes:
        check: ``check(info) -> bool`` on a :class:`ParamInfo`.
        train: Whether a matched parameter stays trainable.
        pattern: A trainable pattern (``"*.bias"``) written in the config instead of every name when it
            keeps exactly the parameters this capability kept; ``None`` for the names.
    """

    check: ParamCheck
    train: bool = True
    pattern: str | None = None


@dataclass
class Strategy:
    """A fine-tuning strategy: module and parameter capabilities, first match wins.

    Call it on a model to get its :class:`Config`; ``a + b`` tries ``a``'s capabilities first.

    Attributes:
        module_caps: The module capabilities, in order.
        param_caps: The parameter capabilities, in order.
        constraint_type: Model classes the strategy applies to (empty: any ``nn.Module``).
        name: The name used in error messages.
    """

    module_caps: list[ModuleCap] = field(default_factory=list)
    param_caps: list[ParamCap] = field(default_factory=list)
    constraint_type: tuple[type, ...] = ()
    name: str = "strategy"

    def __post_init__(self) -> None:
        self.module_caps = list(self.module_caps)
        self.param_caps = list(self.param_caps)
        if isinstance(self.constraint_type, type):
            self.constraint_type = (self.constraint_type,)
        self.constraint_type = tuple(self.constraint_type)

    def register_module_cap(self, check: ModuleCheck, action: ModuleAction) -> "Strategy":
        """Append a :class:`ModuleCap`.

        Args:
            check: ``check(info) -> bool`` on a :class:`ModuleInfo`.
            action: ``action(info) -> Claim`` for a matched module.

        Returns:
            This strategy (for chaining).
        """
        self.module_caps.append(ModuleCap(check, action))
        return self

    def register_param_cap(
        self, check: ParamCheck, train: bool = True, pattern: str | None = None
    ) -> "Strategy":
        """Append a :class:`ParamCap`.

        Args:
            check: ``check(info) -> bool`` on a :class:`ParamInfo`.
            train: Whether a matched parameter stays trainable.
            pattern: The trainable pattern written instead of the names it keeps, or ``None``.

        Returns:
            This strategy (for chaining).
        """
        self.param_caps.append(ParamCap(check, train, pattern))
        return self

    def __add__(self, other: "Strategy") -> "Strategy":
        """GIFt's ``merger_strategy``: this strategy's capabilities first, then ``other``'s."""
        if not isinstance(other, Strategy):
            return NotImplemented
        if self.constraint_type and other.constraint_type:
            types = tuple(t for t in self.constraint_type if t in other.constraint_type)
            if not types:
                raise ValueError(f"{self.name} and {other.name} apply to disjoint model types")
        else:
            types = self.constraint_type or other.constraint_type
        return Strategy(
            self.module_caps + other.module_caps,
            self.param_caps + other.param_caps,
            types,
            f"{self.name}+{other.name}",
        )

    def __call__(self, model: nn.Module) -> Config:
        """Visit ``model`` and return the Config this strategy gives it."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"a strategy applies to an nn.Module, got {type(model).__name__}")
        if self.constraint_type and not isinstance(model, self.constraint_type):
            names = ", ".join(t.__name__ for t in self.constraint_type)
            raise TypeError(f"{self.name} applies to {names} models, not {type(model).__name__}")
        placements: list[Placement] = []
        kept: list[str] = []
        kept_by_cap: dict[int, set[str]] = {}
        others: dict[str, list[str]] = {}
        for alias, canonical in module_aliases(model).items():
            others.setdefault(canonical, []).append(alias)
        self._visit(
            model, ModuleInfo("", "", model, None), placements, kept, kept_by_cap, ({id(model)}, others)
        )
        all_names = [n for n, _ in model.named_parameters()]
        return Config(placements, _patterns(kept, kept_by_cap, self.param_caps, all_names))

    def _visit(
        self,
        module: nn.Module,
        info: ModuleInfo,
        placements: list[Placement],
        kept: list[str],
        kept_by_cap: dict[int, set[str]],
        names: tuple[set[int], dict[str, list[str]]],
    ) -> None:
        if info.path:  # the root is never claimed (GIFt visits children only)
            for cap in self.module_caps:
                if cap.check(info):
                    claim = cap.action(info)
                    if not isinstance(claim, Claim):
                        raise TypeError(
                            f"a module action must return a Claim, got "
                            f"{type(claim).__name__} for '{info.path}'"
                        )
                    placements.extend(claim.placements)
                    kept.extend(claim.trainable)
                    return
        for name, param in module.named_parameters(recurse=False):
            path = f"{info.path}.{name}" if info.path else name
            pinfo = ParamInfo(info, name, path, param)
            for i, cap in enumerate(self.param_caps):
                if cap.check(pinfo):
                    if cap.train:
                        kept.append(path)
                        kept_by_cap.setdefault(i, set()).add(path)
                    break
        seen, others = names
        for name, child in module._modules.items():
            if child is None or id(child) in seen:  # a shared module: visited under its first name
                continue
            seen.add(id(child))
            path = f"{info.path}.{name}" if info.path else name
            self._visit(
                child,
                ModuleInfo(path, name, child, module, tuple(others.get(path, ()))),
                placements,
                kept,
                kept_by_cap,
                names,
            )


def _patterns(
    kept: list[str], kept_by_cap: dict[int, set[str]], caps: Sequence[ParamCap], all_names: Iterable[str]
) -> list[str]:
    """Kept names, with a capability's ``pattern`` replacing its names when it means exactly them."""
    all_names = list(all_names)
    kept_set = set(kept)
    out: list[str] = []
    covered: set[str] = set()
    for i, names in kept_by_cap.items():
        pattern = caps[i].pattern
        if pattern is None:
            continue
        hits = {n for n in all_names if pattern_matches(pattern, n)}
        if hits == names or (names <= hits <= kept_set):
            out.append(pattern)
            covered |= hits
    out += [n for n in dict.fromkeys(kept) if n not in covered]
    return out


def placement(
    path: str, addin: str, method: str = "adapt_output", side: str = "post", **settings: Any
) -> Placement:
    """An ``{inout}`` placement of ``addin`` at ``path``'s ``side``.

    Args:
        path: The module's dotted path.
        addin: The add-in name.
        method: The add-in method.
        side: ``"pre"`` or ``"post"``.
        **settings: The add-in settings (``r=8``).

    Returns:
        The :class:`Placement`.

    Raises:
        ValueError: ``side`` is neither ``"pre"`` nor ``"post"``.
    """
    point = Point(path, side)  # type: ignore[arg-type]
    return Placement(addin, method, point, point, settings)


def place(
    addin: str,
    method: str = "adapt_output",
    side: str = "post",
    train: Callable[[ModuleInfo], Iterable[str]] | None = None,
    **settings: Any,
) -> ModuleAction:
    """A module action placing ``addin`` at every claimed module (plus kept names from ``train``).

    Args:
        addin: The add-in name.
        method: The add-in method.
        side: ``"pre"`` or ``"post"``.
        train: ``train(info)`` gives parameter names to keep trainable for a claimed module, or ``None``.
        **settings: The add-in settings.

    Returns:
        ``action(info) -> Claim``, for a :class:`ModuleCap`.
    """

    def action(info: ModuleInfo) -> Claim:
        return Claim(
            (placement(info.path, addin, method, side, **settings),), tuple(train(info)) if train else ()
        )

    return action
