"""Check a Config against a model BEFORE anything is changed, and build the add-ins.

Every problem is a :class:`ConfigError` pointing at the entry in the string that caused it.
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from torch import nn

from ..addins.base import (
    PointInfo,
    is_across_method,
    is_forward_method,
    is_hook_method,
    is_weight_method,
    methods_for,
    signature_fits,
    withheld,
)
from ..addins.registry import available_addins
from ..config import Config, ConfigError, Placement, Point, format_path
from ..graph import ModuleGraph, canonical_path
from ..inputs import model_device
from .forwards import check_replaceable
from .freezing import match_trainable
from ..addins.weights import check_adaptable


@dataclass
class Resolved:
    """A placement checked against the model, with its add-in built (not yet attached)."""

    key: str
    placement: Placement
    addin: nn.Module
    weight_param: str | None = None  # set for a weight method: the parameter it adapts
    forward: bool = False  # a forward method: it replaces the module's forward (engine/forwards.py)


# What the engine itself passes to a factory that names it in its signature (never a string setting):
# the point, the {in} point of an across placement, and ``shared`` — one dict per attach() call that
# add-ins whose parameters are shared across placements (FacT's factors) use to find each other.
ENGINE_ARGUMENTS = ("point", "source_point", "shared")


class _Locator:
    """Turns a placement and a detail (a name, a path segment) into an offset in the string."""

    def __init__(self, cfg: Config) -> None:
        self.text = cfg.text

    def at(self, placement: Placement | None, needle: str | None = None) -> int | None:
        if self.text is None:
            return None
        span = placement.span if placement is not None else None
        start, end = span if span else (0, len(self.text))
        if needle:
            found = self.text.find(needle, start, end)
            if found >= 0:
                return found
        return start if span else None

    def error(
        self, message: str, placement: Placement | None, needle: str | None = None, hint: str | None = None
    ) -> ConfigError:
        return ConfigError(message, self.text, self.at(placement, needle), hint)


def _describe(p: Placement) -> str:
    if p.kind == "inout":
        return f"({p.addin}.{p.method}) at {p.source}"
    return f"({p.addin}.{p.method}) from {p.source} to {p.target}"


class SharedModuleWarning(UserWarning):
    """A config names a module by one of its other names (a module shared by several parents)."""


def canonical_config(cfg: Config, graph: ModuleGraph) -> Config:
    """``cfg`` with every module named by an alias (another name of a module shared by several
    parents, :attr:`ModuleGraph.aliases`) renamed to its canonical name, with a
    :class:`SharedModuleWarning` per alias; ``cfg`` itself when it names no alias.

    Placements, trainable patterns without wildcards and ``running_stats`` patterns are renamed (a
    wildcard pattern matches canonical names only). Hooks are per module object, so a placement on a
    shared module runs wherever the module runs, under every parent.

    Raises:
        ConfigError: Two placements are the same add-in, method, points and settings once renamed: both
            names reach one module object, which would get the add-in twice.
    """
    aliases = graph.aliases
    if not aliases:
        return cfg
    loc = _Locator(cfg)
    noted: set[str] = set()

    def rename(path: str, where: str) -> str:
        canonical = canonical_path(path, aliases)
        if canonical != path and path not in noted:
            noted.add(path)
            node = graph[canonical] if canonical in graph else None
            what = f" ({node.class_name})" if node is not None else ""
            others = [format_path(a) for a in (node.aliases if node is not None else []) if a != path]
            also = f"; also reachable as {', '.join(repr(o) for o in others)}" if others else ""
            warnings.warn(
                f"{where}: '{format_path(path)}' is '{format_path(canonical)}'{what}, one module "
                f"shared by several parents{also}; it is placed under its canonical name "
                f"'{format_path(canonical)}' (the first name named_modules() gives) and runs "
                f"wherever that module runs",
                SharedModuleWarning,
                stacklevel=4,
            )
        return canonical

    placements: list[Placement] = []
    seen: dict[Placement, Placement] = {}
    for p in cfg.placements:
        source = replace(p.source, module=rename(p.source.module, _describe(p)))
        target = (
            source if p.kind == "inout" else replace(p.target, module=rename(p.target.module, _describe(p)))
        )
        q = p if (source, target) == (p.source, p.target) else replace(p, source=source, target=target)
        if q in seen and (q != p or seen[q] != q):
            first = seen[q]
            raise loc.error(
                f"{_describe(p)} and {_describe(first)} are one placement on one module: "
                f"'{format_path(target.module)}' is shared by several parents and both names "
                f"reach it, so its add-in would be attached twice",
                p,
                hint=f"place it once, at '{format_path(target.module)}': it runs wherever the module runs",
            )
        seen.setdefault(q, p)
        placements.append(q)

    def patterns(values: tuple[str, ...], kind: str) -> list[str]:
        return [v if any(c in v for c in "*?[") else rename(v, f"{kind}({v})") for v in values]

    trainable = patterns(cfg.trainable, "trainable")
    running = patterns(cfg.running_stats, "running_stats")
    if not noted:
        return cfg
    spans = {
        canonical_path(k, aliases) if not any(c in k for c in "*?[") else k: v
        for k, v in cfg.trainable_spans.items()
    }
    return Config(placements, trainable, cfg.text, trainable_spans=spans, running_stats=running)


def check_module(
    path: str,
    modules: Mapping[str, nn.Module],
    graph: ModuleGraph,
    loc: _Locator,
    placement: Placement | None,
) -> nn.Module:
    if path in modules and path != "":
        return modules[path]
    segments = path.split(".")
    prefix = ""
    bad = segments[0]
    for seg in segments:
        candidate = f"{prefix}.{seg}" if prefix else seg
        if candidate not in modules:
            bad = seg
            break
        prefix = candidate
    owner = f"'{format_path(prefix)}'" if prefix else "the model"
    suggestions = graph.suggest(path, n=1)
    hint = (
        f"did you mean {', '.join(repr(format_path(s)) for s in suggestions)}?"
        if suggestions
        else "print(model) shows the module names"
    )
    children = [n.name for n in graph.nodes if n.parent == (prefix or None)]
    if bad.isdigit() and children and all(c.isdigit() for c in children):
        detail = f" ({owner} has {len(children)} blocks: indices 0 to {len(children) - 1})"
        hint = f"ranges are end-exclusive: [0:{len(children)}] covers all of {owner}"
        needles = [f":{int(bad) + 1}]", f"[{bad}]", f".{bad}"]
    else:
        shown = ", ".join(children[:8]) + (", ..." if len(children) > 8 else "")
        detail = f" ({owner} has no child '{bad}'; its children: {shown})" if children else ""
        needles = [bad]
    pos = next(
        (
            loc.at(placement, n)
            for n in needles
            if loc.text is not None
            and placement is not None
            and placement.span is not None
            and loc.text.find(n, *placement.span) >= 0
        ),
        None,
    )
    raise ConfigError(
        f"no module '{format_path(path)}' in {graph.root_class}{detail}",
        loc.text,
        pos if pos is not None else loc.at(placement),
        hint,
    )


def _factory_params(factory: Callable) -> tuple[set[str], bool, list[str]]:
    """(accepted keyword names, accepts **kwargs, required names) of a factory."""
    params = _factory_signature(factory)
    if params is None:
        return set(), True, []
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    required = [
        p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return names, var_kw, required


def _factory_signature(factory: Callable) -> list[inspect.Parameter] | None:
    target = getattr(factory, "__init__") if isinstance(factory, type) else factory
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if isinstance(factory, type) and params and params[0].name == "self":
        params = params[1:]
    return params


_SIMPLE_TYPES = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "None": (type(None),),
    "NoneType": (type(None),),
}


def _allowed_types(param: inspect.Parameter) -> tuple[type, ...] | None:
    """The value types a setting may take, from the parameter's annotation (``int``, ``float | None``,
    ``Optional[str]`` ...) or else its default; ``None`` when neither says (anything is accepted)."""
    ann = param.annotation
    if ann is not param.empty:
        text = ann if isinstance(ann, str) else getattr(ann, "__name__", None) or str(ann)
        text = text.replace("typing.", "").replace(" ", "")
        if text.startswith("Optional[") and text.endswith("]"):
            text = text[len("Optional[") : -1] + "|None"
        names = text.split("|")
        if all(n in _SIMPLE_TYPES for n in names):
            return tuple(t for n in names for t in _SIMPLE_TYPES[n])
        return None
    default = param.default
    if default is param.empty or default is None:
        return None
    for name, types in _SIMPLE_TYPES.items():
        if type(default).__name__ == name:
            return types
    return None


def _type_error(key: str, value: Any, types: tuple[type, ...] | None) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"setting '{key}' must be a finite number, got {value!r}"
    if types is None:
        return None
    # bool is a subclass of int: r=true is not a rank
    ok = any(type(value) is t or (t is float and type(value) is int) for t in types)
    if ok:
        return None
    want = " or ".join(dict.fromkeys("none" if t is type(None) else t.__name__ for t in types))
    return f"setting '{key}' must be {want}, got {type(value).__name__} {value!r}"


def _point_info(point: Point, module: nn.Module, graph: ModuleGraph) -> PointInfo:
    node = graph[point.module] if point.module in graph else None
    shape = None
    if node is not None:
        shape = node.input_shape if point.side == "pre" else node.output_shape
    return PointInfo(module, point.side, shape, point.module)


def _key(placement: Placement, taken: dict[str, int]) -> str:
    """A unique key per add-in; ``taken`` maps each base to the next suffix to try (linear overall)."""
    base = f"{placement.addin}_{re.sub(r'[^A-Za-z0-9_]', '_', placement.target.module)}"
    key = base
    n = taken.get(base, 0)
    if n:
        key = f"{base}_{n}"
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken[base] = n + 1
    taken.setdefault(key, 0)
    return key


def resolve(
    model: nn.Module,
    cfg: Config,
    graph: ModuleGraph,
    addins: Mapping[str, Callable] | None,
    reuse: Mapping[Placement, nn.Module] | None = None,
) -> tuple[list[Resolved], set[str]]:
    """Validate ``cfg`` against ``model`` and build its add-ins; return them and the kept-trainable
    parameter names. A placement found in ``reuse`` (equal add-in, method, points and settings) takes
    that add-in object instead of a new one, once. Raises ConfigError; never changes the model."""
    cfg = canonical_config(cfg, graph)  # attach() did it already; a direct call gets it here
    spare = dict(reuse or {})
    loc = _Locator(cfg)
    modules = dict(model.named_modules())
    user = dict(addins or {})
    for name in user:
        if not str(name).isidentifier():
            raise ConfigError(
                f"add-in name {name!r} in addins= must be an identifier to be written in a config string"
            )
    registry = None
    resolved: list[Resolved] = []
    taken: dict[str, int] = {}
    replaced: dict[str, Placement] = {}  # module path -> the placement whose forward method replaces it
    shared: dict[Any, Any] = {}
    for p in cfg.placements:  # reused add-ins bring their shared parts, so new ones join them
        share_into = getattr(spare.get(p), "share_into", None)
        if callable(share_into):
            share_into(shared)
    for p in cfg.placements:
        target_module = check_module(p.target.module, modules, graph, loc, p)
        source_module = check_module(p.source.module, modules, graph, loc, p)
        factory = user.get(p.addin)
        if factory is None:
            registry = registry if registry is not None else available_addins()
            factory = registry.get(p.addin)
        if factory is None:
            known = sorted(set(user) | set(registry or {}))
            from ..config.errors import did_you_mean

            close = did_you_mean(p.addin, known)
            hint = (
                f"did you mean '{close[0]}'?"
                if close
                else "pass your add-in class with addins={'Name': Name}"
            )
            raise loc.error(f"unknown add-in '{p.addin}' (known: {', '.join(known)})", p, p.addin, hint)
        if p.kind == "across":
            _check_order(p, graph, loc)
        addin = spare.pop(p, None)
        if addin is None:
            addin = _build(factory, p, target_module, source_module, graph, loc, shared)
        _check_method(addin, p, loc)
        checker = getattr(addin, "check_method", None)
        if callable(checker):  # the add-in's own word on whether this method is right here
            try:
                checker(p.method)
            except ValueError as exc:
                raise loc.error(f"{p.addin}.{p.method} at {p.target}: {exc}", p, p.method) from None
        weight_param = _weight_param(addin, p, target_module, loc)
        if weight_param is None:
            _check_runs(p, graph, modules, addin, loc)
        forward = is_forward_method(getattr(addin, p.method))
        if forward:
            _check_forward(p, target_module, replaced, loc)
        device = model_device(target_module)
        if device is not None:
            addin.to(device)
        resolved.append(Resolved(_key(p, taken), p, addin, weight_param, forward))
    names = [n for n, _ in model.named_parameters()]
    keep, unmatched = match_trainable(names, cfg.trainable)
    if unmatched:
        from ..config.errors import did_you_mean

        bad = unmatched[0]
        close = did_you_mean(bad, names + list(modules))
        raise ConfigError(
            f"trainable pattern '{format_path(bad)}' matches no parameter of {graph.root_class}",
            cfg.text,
            _trainable_position(cfg, bad),
            f"did you mean '{format_path(close[0])}'?"
            if close
            else "patterns are parameter names or module paths, e.g. head or *.bias",
        )
    return resolved, keep


def _weight_param(addin: nn.Module, p: Placement, module: nn.Module, loc: _Locator) -> str | None:
    """The parameter a weight method adapts (checked), or None for a hook method."""
    fn = getattr(addin, p.method)
    if not is_weight_method(fn):
        return None
    name = getattr(fn, "__addin_weight_param__", None)
    if name is None:
        chooser = getattr(addin, "weight_param", None)
        name = chooser(module) if callable(chooser) else "weight"
    problem = check_adaptable(module, name)
    if problem:
        raise loc.error(f"{p.addin}.{p.method} at {p.target} adapts a weight, but {problem}", p, p.method)
    return name


def _check_forward(p: Placement, module: nn.Module, replaced: dict[str, Placement], loc: _Locator) -> None:
    """A module's forward can be replaced by one forward method at a time."""
    path = p.target.module
    problem = check_replaceable(module)
    if problem is None and path in replaced:
        problem = f"its forward is already replaced by {_describe(replaced[path])} in this config"
    if problem:
        raise loc.error(
            f"{_describe(p)} replaces the forward of '{format_path(path)}', but {problem}",
            p,
            p.method,
            hint="one forward method per module: detach the other first",
        )
    replaced[path] = p


def _reader(path: str, graph: ModuleGraph) -> str | None:
    """The nearest ancestor of ``path`` that ran in the traced pass (who reads its weight), or None."""
    while "." in path:
        path = path.rsplit(".", 1)[0]
        if path in graph and graph[path].order is not None:
            return path
    return None


def weight_methods(addin: nn.Module) -> list[str]:
    """The weight methods an add-in offers (for hints)."""
    return sorted(
        n
        for n in dir(type(addin))
        if is_hook_method(addin, n) and is_weight_method(getattr(type(addin), n, None))
    )


def _check_runs(
    p: Placement, graph: ModuleGraph, modules: Mapping[str, nn.Module], addin: nn.Module, loc: _Locator
) -> None:
    """A hook on a module that never ran in the traced pass would do nothing: refuse it."""
    if not graph.traced:
        return  # the first forward pass checks it instead (FirstForwardCheck)
    for point in {p.source, p.target}:
        node = graph[point.module]
        if (node.pre_event if point.side == "pre" else node.post_event) is not None:
            continue
        module = modules[point.module]
        name = format_path(point.module)
        reader = _reader(point.module, graph)
        who = ""
        if reader is not None:
            own = point.module[len(reader) + 1 :]
            weight = next((f"{own}.{n}" for n, _ in module.named_parameters(recurse=False)), None)
            reads = f" and reads '{weight}' itself" if weight else ""
            who = f"; its parent '{format_path(reader)}' ({graph[reader].class_name}) runs{reads}"
        alternatives = weight_methods(addin)
        if alternatives:
            hint = (
                f"adapt the weight itself: ({p.addin}.{alternatives[0]}) at ({name}){{inout1}} works "
                f"wherever the weight is read (strategies.lora_all/lora choose it when given "
                f"example_input=)"
            )
        else:
            hint = "place the add-in on a module that runs, e.g. its parent"
        raise loc.error(
            f"module '{name}' ({type(module).__name__}) never runs as a module in the forward "
            f"pass of the example input, so {_describe(p)} would never run{who}",
            p,
            point.module.rsplit(".", 1)[-1],
            hint=hint,
        )


def _trainable_position(cfg: Config, pattern: str) -> int | None:
    """Where ``pattern`` is written in the string: the parser's record, else a search, else the
    ``trainable`` keyword (a pattern is always somewhere in a trainable(...) entry)."""
    if not cfg.text:
        return None
    if pattern in cfg.trainable_spans:
        return cfg.trainable_spans[pattern]
    for needle in (format_path(pattern), pattern, "trainable"):
        pos = cfg.text.find(needle)
        if pos >= 0:
            return pos
    return 0


def _check_order(p: Placement, graph: ModuleGraph, loc: _Locator) -> None:
    if not graph.traced:
        return  # checked at run time instead (RunAction raises if {in} did not run)
    events = []
    for point in (p.source, p.target):
        node = graph[point.module]
        event = node.pre_event if point.side == "pre" else node.post_event
        if event is None:
            raise loc.error(
                f"module '{format_path(point.module)}' does not run in the forward pass of "
                f"the example input, so {_describe(p)} would never run",
                p,
                point.module.rsplit(".", 1)[-1],
            )
        events.append(event)
    if events[0] >= events[1]:
        raise loc.error(
            f"{{in}} at {p.source} runs after {{out}} at {p.target} in the forward pass; "
            f"an add-in must read its input before its result goes back",
            p,
            p.target.module.rsplit(".", 1)[-1],
            hint="swap the two points",
        )


def _build(
    factory: Callable,
    p: Placement,
    target_module: nn.Module,
    source_module: nn.Module,
    graph: ModuleGraph,
    loc: _Locator,
    shared: dict[Any, Any] | None = None,
) -> nn.Module:
    accepted, var_kw, required = _factory_params(factory)
    params = {q.name: q for q in _factory_signature(factory) or []}
    offered: dict[str, Any] = {
        "point": _point_info(p.target, target_module, graph),
        "source_point": _point_info(p.source, source_module, graph),
        "shared": shared if shared is not None else {},
    }
    kwargs = {k: v for k, v in offered.items() if k in accepted}
    for key, value in p.settings.items():
        if key in offered:
            raise loc.error(f"setting '{key}' is reserved (the engine passes it)", p, key)
        if key not in accepted and not var_kw:
            takes = sorted(accepted - set(offered))
            raise loc.error(
                f"{p.addin} does not take a setting '{key}'"
                f" (it takes: {', '.join(takes) if takes else 'no settings'})",
                p,
                key,
            )
        param = params.get(key)
        problem = _type_error(key, value, _allowed_types(param) if param is not None else None)
        if problem:
            raise loc.error(f"{p.addin}: {problem}", p, f"{key}=")
        kwargs[key] = value
    missing = [r for r in required if r not in kwargs]
    if missing:
        raise loc.error(
            f"{p.addin} needs {', '.join(repr(m) for m in missing)}, which the string does not give",
            p,
            p.addin,
            hint=f"add it as a setting, e.g. ({p.addin}.{p.method}, {missing[0]}=...), or "
            f"let the factory take 'point' and size itself from point.shape",
        )
    try:
        addin = factory(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        raise loc.error(
            f"building {p.addin} for {_describe(p)} failed: {type(exc).__name__}: {exc}", p, p.addin
        ) from exc
    if not isinstance(addin, nn.Module):
        raise loc.error(
            f"the factory for '{p.addin}' returned {type(addin).__name__}, not an nn.Module",
            p,
            p.addin,
            hint="subclass addin_studio.AddinBase",
        )
    return addin


def _check_method(addin: nn.Module, p: Placement, loc: _Locator) -> None:
    side = p.target.side
    if is_hook_method(addin, p.method):
        fn = getattr(addin, p.method)
        if signature_fits(fn, side):
            _check_kind(addin, p, fn, loc)
            return
        valid = methods_for(addin, side)
        want = "(module, inputs)" if side == "pre" else "(module, inputs, outputs)"
        where = "before" if side == "pre" else "after"
        raise loc.error(
            f"{p.addin}.{p.method} cannot run at {p.target} ({where} the module): a {side} "
            f"point calls method{want}",
            p,
            p.method,
            hint=f"use one of: {', '.join(valid)}" if valid else f"define a method taking {want}",
        )
    valid = methods_for(addin, side)
    hint = f"methods that can run at a {side} point: {', '.join(valid) or 'none'}"
    if withheld(addin, p.method):  # inherited, not offered (AddinBase's defaults on most built-ins)
        offered = getattr(type(addin), "offers", ())
        raise loc.error(
            f"{p.addin} has no method '{p.method}' (it offers {', '.join(offered)})", p, p.method, hint=hint
        )
    if p.method.startswith("_") or hasattr(nn.Module, p.method) or getattr(addin, p.method, None) is not None:
        raise loc.error(
            f"{p.addin}.{p.method} is not a hook method: a string may name only the "
            f"add-in's adapt_* methods and those declared with @hook_method",
            p,
            p.method,
            hint=hint,
        )
    raise loc.error(f"{p.addin} has no method '{p.method}'", p, p.method, hint=hint)


def _check_kind(addin: nn.Module, p: Placement, fn: Callable, loc: _Locator) -> None:
    """An across method (it reads the ``{in}`` feature) runs at the ``{out}`` of an ``{in}...{out}``
    pair; every other method at an ``{inout}`` point, where nothing is stored to read across."""
    across = is_across_method(fn, p.method)
    if across == (p.kind == "across"):
        return
    side = p.target.side
    others = [m for m in methods_for(addin, side) if is_across_method(getattr(addin, m), m) != across]
    if across:
        raise loc.error(
            f"{_describe(p)} breaks the forward pass: {p.method} reads the feature stored at "
            f"an {{in}} point, and {p.target} is an {{inout}} point, which stores none",
            p,
            p.method,
            hint="use {in1}...{out1} to read one point's feature at another"
            + (f", or {' / '.join(others)} at this {{inout}} point" if others else ""),
        )
    raise loc.error(
        f"{_describe(p)} would drop the feature of {p.source}: {p.method} does not read "
        f"across (only adapt_across_* and @hook_method(across=True) methods do)",
        p,
        p.method,
        hint=(
            f"use one of: {', '.join(others)}"
            if others
            else f"{p.addin} reads no feature across: place it at an {{inout}} point"
        ),
    )
