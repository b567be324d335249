"""Write the laid-out tree as SVG carrying the DOM contract's ``data-*`` attributes.

Every drawn module gets ``data-path`` (a collapsed group also ``data-range``); every insertion point
is a ``<circle data-point="path:pre|post">``. Points inside a collapsed group carry ``data-group``
so a click there means the whole range. The Studio page sets placement labels and states itself as
they change; a static picture (the report, a notebook) gets them here from :class:`Marks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Mapping, Sequence

from .layout import Layout, key, layout
from .tree import Item, TreeBuilder

POINT_R = 5.5
CSS = Path(__file__).with_name("graph.css")  # the graph's style, shared by the Studio and the report


@dataclass
class Marks:
    """What a static picture shows of a config: labels by point, across links, states by module path."""

    labels: Mapping[str, str] = field(default_factory=dict)
    links: Sequence[tuple[str, str]] = ()
    states: Mapping[str, str] = field(default_factory=dict)
    centers: dict[str, tuple[float, float]] = field(default_factory=dict)  # filled while drawing


def _attr(name: str, value: object) -> str:
    return f' {name}="{escape(str(value), quote=True)}"'


def _points(item: Item, x: float, y: float, w: float, h: float, out: list[str], marks: Marks | None) -> None:
    # boxes carry their points at the middle of their top/bottom edges, clusters at the left
    px = x + w / 2 if item.is_box else x + 14
    group = _attr("data-group", item.group) if item.group else ""
    for side, py in (("pre", y), ("post", y + h)):
        point = f"{item.point_path}:{side}"
        held = ""
        if marks is not None:
            marks.centers.setdefault(point, (px, py))
            if marks.labels.get(point):
                held = _attr("data-placement", marks.labels[point])
        out.append(
            f'<circle class="as-point"{_attr("data-point", point)}{held}'
            f'{group} cx="{px:.1f}" cy="{py:.1f}" r="{POINT_R}"><title>'
            f"{escape('before' if side == 'pre' else 'after')} {escape(item.point_path)}"
            f"{' (every block)' if item.group else ''}</title></circle>"
        )


def _item(item: Item, lay: Layout, out: list[str], marks: Marks | None = None) -> None:
    x, y, w, h = lay.boxes[key(item)]
    attrs = _attr("data-path", item.path) + _attr("data-kind", item.kind)
    if item.range:
        attrs += _attr("data-range", item.range)
    cls = f"as-node as-{item.kind} as-{item.state}"
    if item.order == float("inf"):
        cls += " as-unused"
    if marks is not None:
        if marks.states.get(item.path):
            cls += f" as-s-{marks.states[item.path]}"
        if any(marks.labels.get(f"{item.point_path}:{side}") for side in ("pre", "post")):
            cls += " as-has-addin"
    out.append(f'<g{attrs} class="{cls}"><title>{escape(item.title)}</title>')
    out.append(
        f'<rect class="as-shape" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
        f'rx="{4 if item.is_box else 6}"/>'
    )
    if item.is_box:
        out.append(f'<text class="as-label" x="{x + w / 2:.1f}" y="{y + 15:.1f}">{escape(item.label)}</text>')
        out.append(f'<text class="as-sub" x="{x + w / 2:.1f}" y="{y + 29:.1f}">{escape(item.sub)}</text>')
    else:
        out.append(
            f'<text class="as-clabel" x="{x + 26:.1f}" y="{y + 14:.1f}">{escape(item.label)}'
            f'<tspan class="as-csub"> {escape(item.sub)}</tspan></text>'
        )
    if item.kind != "leaf":
        # a +/- toggle: clusters collapse, boxes expand, groups show every block
        sign = "+" if item.kind in ("box", "group") else "−"
        tx = x + w - 14
        out.append(
            f'<g class="as-toggle"{_attr("data-toggle", item.path)}><rect x="{tx - 7:.1f}" '
            f'y="{y + 3:.1f}" width="14" height="14" rx="3"/><text x="{tx:.1f}" '
            f'y="{y + 14:.1f}">{sign}</text></g>'
        )
    for child in item.children:
        _item(child, lay, out, marks)
    _points(item, x, y, w, h, out, marks)
    out.append("</g>")


def _edge(poly: list[tuple[float, float]], curved: bool) -> str:
    if not poly:
        return ""
    d = f"M{poly[0][0]:.1f},{poly[0][1]:.1f}"
    if curved and len(poly) >= 4:
        body, rest = poly[1:], []
        n = (len(body) // 3) * 3
        for i in range(0, n, 3):
            (ax, ay), (bx, by), (cx, cy) = body[i : i + 3]
            d += f" C{ax:.1f},{ay:.1f} {bx:.1f},{by:.1f} {cx:.1f},{cy:.1f}"
        rest = body[n:]
        for px, py in rest:
            d += f" L{px:.1f},{py:.1f}"
    else:
        for px, py in poly[1:]:
            d += f" L{px:.1f},{py:.1f}"
    return f'<path class="as-edge" d="{d}" marker-end="url(#as-arrow)"/>'


def _overlay(marks: Marks) -> tuple[list[str], float]:
    """Labels beside the marked points and the across links (what the Studio page draws live)."""
    out, right = [], 0.0
    for point, text in marks.labels.items():
        if text and point in marks.centers:
            cx, cy = marks.centers[point]
            out.append(f'<text class="as-plabel" x="{cx + 8:.1f}" y="{cy + 4:.1f}">{escape(text)}</text>')
            right = max(right, cx + 8 + 7 * len(text))
    for a, b in marks.links:
        if a in marks.centers and b in marks.centers:
            (ax, ay), (bx, by) = marks.centers[a], marks.centers[b]
            bend = max(ax, bx) + 40 + abs(by - ay) * 0.08
            out.append(
                f'<path d="M {ax:.1f} {ay:.1f} C {bend:.1f} {ay:.1f}, {bend:.1f} {by:.1f}, '
                f'{bx:.1f} {by:.1f}" class="as-link" marker-end="url(#as-arrow)"/>'
            )
            right = max(right, bend + 10)
    return out, right


def render_svg(items: list[Item], lay: Layout, marks: Marks | None = None) -> str:
    """The graph as one ``<svg>`` string; with ``marks``, placements are drawn in (a static picture)."""
    body = ['<g class="as-items">']
    for it in items:
        _item(it, lay, body, marks)
    body.append('</g><g class="as-edges">')
    body.extend(_edge(p, lay.curved) for p in lay.edges)
    overlay, right = _overlay(marks) if marks is not None else ([], 0.0)
    body.append('</g><g class="as-overlay">' + "".join(overlay) + "</g></svg>")
    width = max(lay.width, right)
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="as-graph" data-engine="{lay.engine}" '
        f'width="{width:.0f}" height="{lay.height:.0f}" viewBox="0 0 {width:.1f} '
        f'{lay.height:.1f}">',
        '<defs><marker id="as-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
    ]
    return "".join(head + body)


def graph_svg(
    graph: Any,
    config: Any,
    *,
    style: str = "canonical",
    engine: str = "auto",
    states: Mapping[str, str] | None = None,
) -> str:
    """A static picture of ``graph`` with the placements of ``config`` (a Config or string) drawn in:
    the Studio's layout and look, each marked point's ``data-placement`` in ``style`` (see
    :func:`~addin_studio.render.labels.point_labels`), across placements as links. The Studio's
    style (:data:`CSS`) travels inside the ``<svg>``, so the picture looks the same anywhere."""
    from ..config import parse
    from .labels import links, point_labels

    cfg = parse(config) if isinstance(config, str) else config
    tree = TreeBuilder(graph)
    items = tree.build(set(), tree.default_collapsed())
    marks = Marks(point_labels(cfg, style), links(cfg), dict(states or {}))
    return styled(render_svg(items, layout(items, engine), marks))


def styled(svg: str) -> str:
    """``svg`` (from :func:`render_svg`) with the graph's style (:data:`CSS`) inside its ``<defs>``:
    the report's pictures and the Studio's canvas carry their look with them."""
    return svg.replace("<defs>", f"<defs><style>{escape(CSS.read_text(), quote=False)}</style>", 1)
