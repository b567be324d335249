"""Trace a model into a module graph: paths, classes, execution order, shapes, parameter counts."""

from __future__ import annotations

import difflib
import dis
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .config.paths import is_index
from .inputs import call_model, model_device  # noqa: F401  (model_device: re-exported)


@dataclass
class ModuleNode:
    """One submodule object, under its canonical name: the first ``model.named_modules()`` gives, the
    name ``print(model)`` shows it under first. ``aliases`` are its other names (a module shared by
    several parents, or held under two names); ``calls`` counts its calls in the traced pass, whose
    first call gives ``order`` and the shapes.

    Attributes:
        path: The canonical dotted name (``"blocks.3.attn"``).
        class_name: The module's class name.
        depth: The number of dots in ``path`` plus one (top-level children have depth 1).
        parent: The parent's path, or ``None`` for a direct child of the model.
        children: The paths of the direct children.
        num_params: Parameters of the module and its submodules.
        trainable_params: Of those, the ones with ``requires_grad``.
        own_params: Parameters of the module itself, not of its submodules.
        input_shape: The shape of the first tensor input of the first call, or ``None``.
        output_shape: The shape of the first tensor output of the first call, or ``None``.
        order: The position of the module's first call in the traced pass, or ``None``.
        extra_repr: The module's ``extra_repr()``.
        aliases: The module's other names.
        calls: How many times the module ran in the traced pass.
        pre_event: The position of the first pre-forward event in the traced pass (internal).
        post_event: The position of the first post-forward event in the traced pass (internal).
    """

    path: str
    class_name: str
    depth: int
    parent: str | None
    children: list[str] = field(default_factory=list)
    num_params: int = 0
    trainable_params: int = 0
    own_params: int = 0
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    order: int | None = None
    extra_repr: str = ""
    aliases: list[str] = field(default_factory=list)
    calls: int = 0
    # positions of the first pre/post events in the traced pass (to check "{in} runs before {out}")
    pre_event: int | None = field(default=None, repr=False)
    post_event: int | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def is_leaf(self) -> bool:
        return not self.children


class ModuleGraph:
    """The traced structure of a model. ``graph["blocks.3.attn"]`` gives a :class:`ModuleNode`.

    Built by :func:`trace`. ``path in graph``, ``len(graph)`` and iteration (the nodes in module order)
    work as well.

    Args:
        nodes: One :class:`ModuleNode` per submodule (not the model itself), in ``named_modules()``
            order.
        root_class: The class name of the model.
        num_params: The model's parameter count.
        trainable_params: How many of them require gradients.
        traced: Whether a forward pass ran (shapes and call order are known).
        aliases: Maps every other name of a module reached under several names (shared by several
            parents) to its canonical name; ``graph[alias]`` gives the canonical node.
    """

    def __init__(
        self,
        nodes: list[ModuleNode],
        root_class: str,
        num_params: int,
        trainable_params: int,
        traced: bool,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.nodes = nodes
        self.root_class = root_class
        self.num_params = num_params
        self.trainable_params = trainable_params
        self.traced = traced
        self.aliases: dict[str, str] = dict(aliases or {})
        self._by_path = {n.path: n for n in nodes}

    def __getitem__(self, path: str) -> ModuleNode:
        return self._by_path[self.aliases.get(path, path)]

    def __contains__(self, path: object) -> bool:
        return path in self._by_path or path in self.aliases

    def canonical(self, path: str) -> str:
        """The canonical name of the module ``path`` names (``path`` itself unless it is an alias).

        Args:
            path: A dotted module path, possibly through an alias.

        Returns:
            The canonical dotted path.
        """
        return canonical_path(path, self.aliases)

    def __iter__(self) -> Iterator[ModuleNode]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def paths(self) -> list[str]:
        return [n.path for n in self.nodes]

    def executed(self) -> list[ModuleNode]:
        """The nodes that ran in the traced forward pass, in order of their first call."""
        return sorted((n for n in self.nodes if n.order is not None), key=lambda n: n.order or 0)

    def roots(self) -> list[ModuleNode]:
        """Direct children of the model."""
        return [n for n in self.nodes if n.parent is None]

    def suggest(self, path: str, n: int = 3) -> list[str]:
        """Closest existing paths to ``path`` (for did-you-mean messages).

        Args:
            path: The dotted path that was not found.
            n: The most suggestions to return.

        Returns:
            Up to ``n`` existing paths, closest first (paths with the same last name if none is close).
        """
        found = difflib.get_close_matches(path, self.paths, n=n, cutoff=0.6)
        if not found:
            tail = path.rsplit(".", 1)[-1]
            found = [p for p in self.paths if p.rsplit(".", 1)[-1] == tail][:n]
        return found

    def repeated_groups(self) -> dict[str, int]:
        """Containers whose children are named ``0..n-1`` (``{"blocks": 12}``), n >= 2."""
        groups = {}
        for node in self.nodes + [ModuleNode("", self.root_class, 0, None, [n.path for n in self.roots()])]:
            names = [c.rsplit(".", 1)[-1] for c in node.children]
            if (
                len(names) >= 2
                and all(is_index(x) for x in names)
                and sorted(int(x) for x in names) == list(range(len(names)))
            ):
                groups[node.path] = len(names)
        return groups

    def __repr__(self) -> str:
        return (
            f"ModuleGraph({self.root_class}, {len(self.nodes)} modules, "
            f"{self.num_params:,} parameters, traced={self.traced})"
        )


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        for v in value.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    if hasattr(value, "to_tuple"):  # transformers ModelOutput
        return _first_tensor(value.to_tuple())
    return None


def module_aliases(model: nn.Module) -> dict[str, str]:
    """Every other name of a module object reached under several names, mapped to its canonical name.

    The canonical name is the first ``model.named_modules()`` yields (depth first, in registration
    order: the name ``print(model)`` shows first, and the prefix of its parameters in
    ``named_parameters()`` and of PEFT's module names). A module shared by two parents (timm CoaT's
    ``cpe1`` is also ``serial_blocks1.0.cpe``) or held under two attribute names gets one entry per
    other name, and so does everything below it. Cycles (a module inside itself) are not followed.
    """
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}

    def visit(module: nn.Module, prefix: str, above: frozenset[int]) -> None:
        for name, child in module._modules.items():
            if child is None or id(child) in above:
                continue
            path = f"{prefix}.{name}" if prefix else name
            if id(child) in first:
                aliases[path] = first[id(child)]
            else:
                first[id(child)] = path
            visit(child, path, above | {id(child)})

    visit(model, "", frozenset({id(model)}))
    return aliases


def canonical_path(path: str, aliases: dict[str, str]) -> str:
    """``path`` with its longest alias prefix replaced by the canonical name (``path`` if none)."""
    if path in aliases:
        return aliases[path]
    head = path
    while "." in head:
        head = head.rsplit(".", 1)[0]
        if head in aliases:
            return aliases[head] + path[len(head) :]
    return path


def _count(module: nn.Module, recurse: bool) -> tuple[int, int]:
    total = trainable = 0
    seen = set()
    for p in module.parameters(recurse=recurse):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def trace(model: nn.Module, example_input: Any = None, **forward_kwargs: Any) -> ModuleGraph:
    """Trace ``model`` into a :class:`ModuleGraph`.

    With ``example_input`` (a tensor, a tuple of positional inputs or a dict of keyword inputs) one
    forward pass runs in eval mode under ``torch.no_grad()`` with temporary hooks that record the order
    of first calls and input/output shapes; the model's training flags are restored afterwards and no
    hooks remain. Works on the ``meta`` device. Without an example input, shapes and order are ``None``.

    A module reached under several names (shared by several parents) is one node, under its canonical
    name (:func:`module_aliases`), with the other names in ``node.aliases``. A module called several
    times keeps the order and shapes of its first call; ``node.calls`` counts them all.

    Args:
        model: The model to trace.
        example_input: A tensor, a tuple of positional inputs or a dict of keyword inputs for one
            forward pass; ``None`` records the structure only.
        **forward_kwargs: Further keyword inputs for that forward pass (used only with
            ``example_input``).

    Returns:
        The :class:`ModuleGraph` of the model's modules.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace() expects an nn.Module, got {type(model).__name__}")
    named = [(p, m) for p, m in model.named_modules() if p]
    nodes: dict[str, ModuleNode] = {}
    for path, module in named:
        parent = path.rsplit(".", 1)[0] if "." in path else None
        total, trainable = _count(module, True)
        own, _ = _count(module, False)
        try:
            extra = module.extra_repr()
        except Exception:  # a broken extra_repr must not break tracing
            extra = ""
        node = ModuleNode(
            path,
            type(module).__name__,
            path.count(".") + 1,
            parent,
            num_params=total,
            trainable_params=trainable,
            own_params=own,
            extra_repr=extra,
        )
        nodes[path] = node
        if parent is not None and parent in nodes:
            nodes[parent].children.append(path)
    aliases = module_aliases(model)
    for alias, canonical in aliases.items():
        nodes[canonical].aliases.append(alias)
    total, trainable = _count(model, True)
    traced = example_input is not None
    if traced:
        _record_forward(model, named, nodes, example_input, forward_kwargs)
    return ModuleGraph(list(nodes.values()), type(model).__name__, total, trainable, traced, aliases)


def _record_forward(
    model: nn.Module,
    named: list[tuple[str, nn.Module]],
    nodes: dict[str, ModuleNode],
    example_input: Any,
    forward_kwargs: dict,
) -> None:
    counter = [0]
    events = [0]
    handles = []

    def make_pre(node: ModuleNode):
        def pre(module, args, kwargs):
            node.calls += 1
            if node.order is None:
                node.order = counter[0]
                counter[0] += 1
                node.pre_event = events[0]
                events[0] += 1
                t = _first_tensor(args) if args else _first_tensor(kwargs)
                node.input_shape = tuple(t.shape) if t is not None else None

        return pre

    def make_post(node: ModuleNode):
        def post(module, args, output):
            if node.post_event is None:
                node.post_event = events[0]
                events[0] += 1
                t = _first_tensor(output)
                node.output_shape = tuple(t.shape) if t is not None else None

        return post

    seen_modules: dict[int, ModuleNode] = {}
    training = {m: m.training for m in model.modules()}
    try:
        for path, module in named:
            if id(module) in seen_modules:
                continue
            node = nodes[path]
            seen_modules[id(module)] = node
            handles.append(module.register_forward_pre_hook(make_pre(node), with_kwargs=True))
            handles.append(module.register_forward_hook(make_post(node)))
        model.eval()
        with torch.no_grad():
            call_model(model, example_input, **forward_kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag


def _self_reads(code: Any) -> set[tuple[str, str]]:
    """``(child, attribute)`` for every ``self.<child>.<attribute>`` a function's bytecode reads (nested
    functions and lambdas included)."""
    found: set[tuple[str, str]] = set()
    try:
        instructions = list(dis.get_instructions(code))
    except TypeError:
        return found
    for a, b, c in zip(instructions, instructions[1:], instructions[2:]):
        if (
            a.opname.startswith("LOAD_FAST")
            and a.argval == "self"
            and b.opname == "LOAD_ATTR"
            and c.opname == "LOAD_ATTR"
        ):
            found.add((str(b.argval), str(c.argval)))
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            found |= _self_reads(const)
    return found


def parent_reads(model: nn.Module, paths: Iterable[str]) -> dict[str, str]:
    """Which of ``paths`` have a parameter that their parent's ``forward`` reads itself.

    Found without running the model, from the bytecode of the parent's ``forward`` (``self.<child>.
    <parameter>``). Such a layer may never run as a module (BEiT's and EVA-02's ``qkv``: ``F.linear(x,
    self.qkv.weight, ...)``; torchvision Swin's), so a hook on it may never run; only a traced forward
    pass (:func:`trace` with an example input: ``node.order is None``) tells for sure. This is the look
    for when there is no example input.

    Args:
        model: The model.
        paths: Module paths to look at (names as ``model.named_modules()`` gives them).

    Returns:
        ``{path: "Attention.forward reads self.qkv.weight"}`` for those of ``paths`` whose parent reads
        one of their own parameters (or parametrized tensors).
    """
    modules = dict(model.named_modules())
    found: dict[str, str] = {}
    reads_of: dict[type, set[tuple[str, str]]] = {}
    for path in paths:
        if not path or path not in modules:
            continue
        parent_path, _, name = path.rpartition(".")
        parent = modules.get(parent_path)
        forward = getattr(type(parent), "forward", None)
        code = getattr(forward, "__code__", None)
        if parent is None or code is None:
            continue
        cls = type(parent)
        if cls not in reads_of:
            reads_of[cls] = _self_reads(code)
        own = {n for n, _ in modules[path].named_parameters(recurse=False)}
        own |= set(getattr(modules[path], "parametrizations", None) or ())
        read = sorted(attr for child, attr in reads_of[cls] if child == name and attr in own)
        if read:
            attr = "weight" if "weight" in read else read[0]
            found[path] = f"{cls.__name__}.forward reads self.{name}.{attr}"
    return found
