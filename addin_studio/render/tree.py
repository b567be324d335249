"""The visible tree of the Studio graph: which modules are drawn, as what, in which order.

Built from a :class:`~addin_studio.graph.ModuleGraph` only. A container is drawn as a *cluster*
(its children inside) or, when collapsed, as one *box*. A repeated group (``blocks.0`` ...
``blocks.11``) is drawn once as a *group*: the template child ``blocks.0`` with the count, and its
insertion points stand for the whole range (they carry ``group="blocks:0:12"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ..graph import ModuleGraph, ModuleNode

#: above this many drawn boxes, deeper containers start collapsed
MAX_VISIBLE = 400


@dataclass
class Item:
    """One drawn element: ``kind`` is ``leaf``, ``box`` (collapsed container), ``cluster`` or ``group``."""

    path: str  # data-path: the module (for a group: the container)
    kind: str
    label: str
    sub: str
    title: str
    point_path: str  # module whose pre/post points this item carries
    group: str | None = None  # collapsed group this item lies in: "blocks:0:12"
    range: str | None = None  # "0:12" for a group
    order: float = float("inf")
    state: str = "none"  # trainable | frozen | partial | none (parameters)
    children: list["Item"] = field(default_factory=list)

    @property
    def is_box(self) -> bool:
        return not self.children

    def walk(self) -> Iterable["Item"]:
        yield self
        for c in self.children:
            yield from c.walk()


def human(n: int) -> str:
    """1234 -> '1.2K', 5_700_000 -> '5.7M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def param_state(node: ModuleNode) -> str:
    if node.num_params == 0:
        return "none"
    if node.trainable_params == 0:
        return "frozen"
    return "trainable" if node.trainable_params == node.num_params else "partial"


def _shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]" if shape is not None else "?"


def _title(node: ModuleNode, extra: str = "") -> str:
    lines = [
        f"{node.path}  ({node.class_name}){extra}",
        f"input {_shape(node.input_shape)}  ->  output {_shape(node.output_shape)}",
        f"parameters {node.num_params:,} ({node.trainable_params:,} trainable)",
    ]
    if node.extra_repr:
        lines.append(node.extra_repr)
    if node.order is None:
        lines.append("not called in the traced forward pass")
    return "\n".join(lines)


class TreeBuilder:
    """Builds the visible tree; ``expanded`` / ``collapsed`` hold user toggles by path."""

    def __init__(self, graph: ModuleGraph) -> None:
        self.graph = graph
        # only children that are alike (same class and size) collapse into one group
        self.groups = {
            p: n
            for p, n in graph.repeated_groups().items()
            if p and len({(graph[c].class_name, graph[c].num_params) for c in graph[p].children}) == 1
        }
        self._first: dict[str, float] = {}
        for node in reversed(graph.nodes):  # children come after parents in named order
            own = node.order if node.order is not None else float("inf")
            kids = [self._first.get(c, float("inf")) for c in node.children]
            self._first[node.path] = min([own] + kids)

    def children(self, path: str | None) -> list[ModuleNode]:
        kids = [self.graph[c] for c in self.graph[path].children] if path else self.graph.roots()
        return sorted(kids, key=lambda n: self._first[n.path])  # stable: named order for ties

    def default_collapsed(self) -> set[str]:
        """Containers to collapse so that at most ``MAX_VISIBLE`` boxes are drawn (deepest first)."""
        if self.count(self.build(set(), set())) <= MAX_VISIBLE:
            return set()
        containers = [n for n in self.graph.nodes if n.children]
        for depth in range(max((n.depth for n in containers), default=1), 1, -1):
            collapsed = {n.path for n in containers if n.depth >= depth}
            if self.count(self.build(set(), collapsed)) <= MAX_VISIBLE:
                return collapsed
        return {n.path for n in containers}

    @staticmethod
    def count(items: list[Item]) -> int:
        return sum(1 for it in items for x in it.walk() if x.is_box)

    def build(self, expanded: set[str], collapsed: set[str]) -> list[Item]:
        """Top-level items. ``expanded``: groups drawn block by block; ``collapsed``: containers as boxes."""
        return [self._item(n, expanded, collapsed, None) for n in self.children(None)]

    def _item(self, node: ModuleNode, expanded: set[str], collapsed: set[str], group: str | None) -> Item:
        order = self._first[node.path]
        common = dict(order=order, state=param_state(node), group=group)
        shape = _shape(node.output_shape) if node.output_shape is not None else ""
        sub = " · ".join(x for x in (shape, human(node.num_params) if node.num_params else "") if x)
        if node.path in self.groups and node.path not in expanded and group is None:
            n = self.groups[node.path]
            template = self.graph[f"{node.path}.0"]
            item = Item(
                node.path,
                "group",
                f"{node.name} × {n}",
                f"{template.class_name} · {human(node.num_params)}",
                _title(node, f": {n} × {template.class_name} (collapsed; points stand for every block)"),
                template.path,
                range=f"0:{n}",
                **{**common, "group": f"{node.path}:0:{n}"},
            )
            item.children = [
                self._item(c, expanded, collapsed, f"{node.path}:0:{n}") for c in self.children(template.path)
            ]
            return item
        label = f"{node.name} · {node.class_name}"
        if node.is_leaf or node.path in collapsed:
            kind = "leaf" if node.is_leaf else "box"
            return Item(node.path, kind, label, sub, _title(node), node.path, **common)
        item = Item(node.path, "cluster", label, sub, _title(node), node.path, **common)
        item.children = [self._item(c, expanded, collapsed, group) for c in self.children(node.path)]
        return item
