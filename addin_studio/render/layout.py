"""Lay out the visible tree top to bottom: graphviz ``dot`` when installed, else a pure-Python stack.

Both engines return the same :class:`Layout` (boxes in pixels, y down, and edge polylines), so the
SVG writer does not care which one ran.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field

from .tree import Item

BOX_H = 36.0
CHAR_W = 6.6  # width of one character at the 11px font the css uses
LABEL_H = 20.0  # room for a cluster's label
PAD = 8.0
GAP = 22.0
DOT_TIMEOUT_S = 60

DOT_MISSING = (
    "graphviz `dot` was not found, so a simple built-in layout is used "
    "(install graphviz, e.g. `apt-get install graphviz`, for the full layout)"
)


@dataclass
class Layout:
    boxes: dict[str, tuple[float, float, float, float]]  # item key -> x, y, w, h
    edges: list[list[tuple[float, float]]]  # polylines (bezier control points for dot)
    width: float
    height: float
    engine: str  # "dot" or "builtin"
    curved: bool = False  # edges are cubic bezier chains
    notice: str = ""
    order: list[str] = field(default_factory=list)  # box keys in the edge chain


def key(item: Item) -> str:
    """Unique id of a drawn item (a group and its template share a module path)."""
    return f"{item.kind}:{item.path}"


def box_width(item: Item) -> float:
    return max(90.0, CHAR_W * max(len(item.label), len(item.sub)) + 2 * PAD)


def cluster_label_width(item: Item) -> float:
    """Room for a cluster's label, its details and the +/- toggle."""
    return CHAR_W * (len(item.label) + len(item.sub) + 1) + 2 * PAD + 40


def chain(items: list[Item]) -> list[Item]:
    """Drawn boxes in execution order (never-called ones are left out of the chain)."""
    boxes = [x for it in items for x in it.walk() if x.is_box and x.order != float("inf")]
    return sorted(boxes, key=lambda x: x.order)


def dot_available() -> bool:
    return shutil.which("dot") is not None


def layout(items: list[Item], engine: str = "auto") -> Layout:
    """Lay out ``items``; ``engine`` is ``auto`` (dot if present), ``dot`` or ``builtin``."""
    if engine not in ("auto", "dot", "builtin"):
        raise ValueError(f"engine must be 'auto', 'dot' or 'builtin', not {engine!r}")
    if engine != "builtin" and dot_available():
        return dot_layout(items)
    if engine == "dot":
        raise RuntimeError(DOT_MISSING)
    out = builtin_layout(items)
    if engine == "auto":
        out.notice = DOT_MISSING
    return out


# -- graphviz -----------------------------------------------------------------------------------
def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot_source(items: list[Item]) -> tuple[str, dict[str, Item]]:
    """The dot program and a map from dot names (n0, cluster_1, ...) to items."""
    names: dict[str, Item] = {}
    lines = [
        "digraph G {",
        "rankdir=TB; nodesep=0.25; ranksep=0.3; newrank=true;",
        'node [shape=box, fixedsize=true, label=""]; edge [arrowsize=0.6];',
    ]

    def emit(item: Item, indent: str) -> None:
        if item.is_box:
            name = f"n{len(names)}"
            names[name] = item
            lines.append(f"{indent}{name} [width={box_width(item) / 72:.3f}, height={BOX_H / 72:.3f}];")
            return
        name = f"cluster_{len(names)}"
        names[name] = item
        width = cluster_label_width(item)
        lines.append(
            f"{indent}subgraph {name} {{ label={_q(' ' * int(width / 2.75))}; fontsize=11; "
            f"labeljust=l; margin={PAD:.0f};"
        )
        for child in item.children:
            emit(child, indent + "  ")
        lines.append(f"{indent}}}")

    for it in items:
        emit(it, "  ")
    ids = {id(v): k for k, v in names.items()}
    # drawing order (depth first) keeps one column; execution edges are drawn on top of it
    dfs = [x for it in items for x in it.walk() if x.is_box]
    seq = chain(items)
    visible = {(id(a), id(b)) for a, b in zip(seq, seq[1:])}
    for a, b in zip(dfs, dfs[1:]):
        style = "" if (id(a), id(b)) in visible else ", style=invis"
        visible.discard((id(a), id(b)))
        lines.append(f"  {ids[id(a)]} -> {ids[id(b)]} [weight=10{style}];")
    for a, b in zip(seq, seq[1:]):
        if (id(a), id(b)) in visible:
            lines.append(f"  {ids[id(a)]} -> {ids[id(b)]} [constraint=false];")
    lines.append("}")
    return "\n".join(lines), names


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace(",", " ").split()]


def dot_layout(items: list[Item]) -> Layout:
    source, names = dot_source(items)
    proc = subprocess.run(
        ["dot", "-Tjson"], input=source.encode(), capture_output=True, timeout=DOT_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dot failed: {proc.stderr.decode(errors='replace')[:500]}")
    data = json.loads(proc.stdout)
    _, _, gw, gh = _floats(data["bb"])
    margin = 4.0
    boxes: dict[str, tuple[float, float, float, float]] = {}
    gvid: dict[int, str] = {}
    for obj in data.get("objects", []):
        item = names.get(obj.get("name", ""))
        if item is None:
            continue
        if "bb" in obj:  # cluster
            x1, y1, x2, y2 = _floats(obj["bb"])
            boxes[key(item)] = (x1 + margin, gh - y2 + margin, x2 - x1, y2 - y1)
        else:
            x, y = _floats(obj["pos"])
            w, h = float(obj["width"]) * 72, float(obj["height"]) * 72
            boxes[key(item)] = (x - w / 2 + margin, gh - y - h / 2 + margin, w, h)
            gvid[obj["_gvid"]] = key(item)
    edges = []
    for e in data.get("edges", []):
        if e.get("style") == "invis":
            continue
        pos = e.get("pos", "")
        pts, end = [], None
        for tok in pos.split():
            if tok.startswith("e,"):
                end = _floats(tok[2:])
            elif not tok.startswith("s,"):
                pts.append(_floats(tok))
        poly = [(x + margin, gh - y + margin) for x, y in pts]
        if end is not None:
            poly.append((end[0] + margin, gh - end[1] + margin))
        edges.append(poly)
    return Layout(
        boxes,
        edges,
        gw + 2 * margin,
        gh + 2 * margin,
        "dot",
        curved=True,
        order=[key(x) for x in chain(items)],
    )


# -- pure Python fallback ------------------------------------------------------------------------
def builtin_layout(items: list[Item]) -> Layout:
    """Stack items top to bottom; clusters indent their children."""
    boxes: dict[str, tuple[float, float, float, float]] = {}

    def place(item: Item, x: float, y: float) -> tuple[float, float]:
        if item.is_box:
            w = box_width(item)
            boxes[key(item)] = (x, y, w, BOX_H)
            return w, BOX_H
        cy, width = y + LABEL_H + PAD, cluster_label_width(item)
        for child in item.children:
            cw, ch = place(child, x + PAD, cy)
            cy += ch + GAP
            width = max(width, cw + 2 * PAD)
        h = cy - GAP + PAD - y
        boxes[key(item)] = (x, y, width, h)
        return width, h

    y, width = 4.0, 0.0
    for it in items:
        w, h = place(it, 4.0, y)
        y += h + GAP
        width = max(width, w)
    seq = chain(items)
    edges = []
    for a, b in zip(seq, seq[1:]):
        ax, ay, aw, ah = boxes[key(a)]
        bx, by, bw, _ = boxes[key(b)]
        edges.append([(ax + aw / 2, ay + ah), (bx + bw / 2, by)])
    return Layout(boxes, edges, width + 8, y, "builtin", order=[key(x) for x in seq])
