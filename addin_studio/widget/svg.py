"""Write the laid-out tree as SVG carrying the DOM contract's ``data-*`` attributes.

Every drawn module gets ``data-path`` (a collapsed group also ``data-range``); every insertion point
is a ``<circle data-point="path:pre|post">``. Points inside a collapsed group carry ``data-group``
so a click there means the whole range. Placement labels and states are set later by the page.
"""
from __future__ import annotations

from html import escape

from .layout import Layout, key
from .tree import Item

POINT_R = 5.5


def _attr(name: str, value: object) -> str:
    return f' {name}="{escape(str(value), quote=True)}"'


def _points(item: Item, x: float, y: float, w: float, h: float, out: list[str]) -> None:
    # boxes carry their points at the middle of their top/bottom edges, clusters at the left
    px = x + w / 2 if item.is_box else x + 14
    group = _attr("data-group", item.group) if item.group else ""
    for side, py in (("pre", y), ("post", y + h)):
        out.append(f'<circle class="as-point"{_attr("data-point", f"{item.point_path}:{side}")}'
                   f'{group} cx="{px:.1f}" cy="{py:.1f}" r="{POINT_R}"><title>'
                   f'{escape("before" if side == "pre" else "after")} {escape(item.point_path)}'
                   f'{" (every block)" if item.group else ""}</title></circle>')


def _item(item: Item, lay: Layout, out: list[str]) -> None:
    x, y, w, h = lay.boxes[key(item)]
    attrs = _attr("data-path", item.path) + _attr("data-kind", item.kind)
    if item.range:
        attrs += _attr("data-range", item.range)
    cls = f"as-node as-{item.kind} as-{item.state}"
    if item.order == float("inf"):
        cls += " as-unused"
    out.append(f'<g class="{cls}"{attrs}><title>{escape(item.title)}</title>')
    out.append(f'<rect class="as-shape" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
               f'rx="{4 if item.is_box else 6}"/>')
    if item.is_box:
        out.append(f'<text class="as-label" x="{x + w / 2:.1f}" y="{y + 15:.1f}">{escape(item.label)}</text>')
        out.append(f'<text class="as-sub" x="{x + w / 2:.1f}" y="{y + 29:.1f}">{escape(item.sub)}</text>')
    else:
        out.append(f'<text class="as-clabel" x="{x + 26:.1f}" y="{y + 14:.1f}">{escape(item.label)}'
                   f'<tspan class="as-csub"> {escape(item.sub)}</tspan></text>')
    if item.kind != "leaf":
        # a +/- toggle: clusters collapse, boxes expand, groups show every block
        sign = "+" if item.kind in ("box", "group") else "−"
        tx = x + w - 14
        out.append(f'<g class="as-toggle"{_attr("data-toggle", item.path)}><rect x="{tx - 7:.1f}" '
                   f'y="{y + 3:.1f}" width="14" height="14" rx="3"/><text x="{tx:.1f}" '
                   f'y="{y + 14:.1f}">{sign}</text></g>')
    for child in item.children:
        _item(child, lay, out)
    _points(item, x, y, w, h, out)
    out.append("</g>")


def _edge(poly: list[tuple[float, float]], curved: bool) -> str:
    if not poly:
        return ""
    d = f"M{poly[0][0]:.1f},{poly[0][1]:.1f}"
    if curved and len(poly) >= 4:
        body, rest = poly[1:], []
        n = (len(body) // 3) * 3
        for i in range(0, n, 3):
            (ax, ay), (bx, by), (cx, cy) = body[i:i + 3]
            d += f" C{ax:.1f},{ay:.1f} {bx:.1f},{by:.1f} {cx:.1f},{cy:.1f}"
        rest = body[n:]
        for px, py in rest:
            d += f" L{px:.1f},{py:.1f}"
    else:
        for px, py in poly[1:]:
            d += f" L{px:.1f},{py:.1f}"
    return f'<path class="as-edge" d="{d}" marker-end="url(#as-arrow)"/>'


def render_svg(items: list[Item], lay: Layout) -> str:
    """The graph as one ``<svg>`` string."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="as-graph" data-engine="{lay.engine}" '
           f'width="{lay.width:.0f}" height="{lay.height:.0f}" viewBox="0 0 {lay.width:.1f} '
           f'{lay.height:.1f}">',
           '<defs><marker id="as-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" '
           'markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
           '<g class="as-items">']
    for it in items:
        _item(it, lay, out)
    out.append('</g><g class="as-edges">')
    out.extend(_edge(p, lay.curved) for p in lay.edges)
    out.append('</g><g class="as-overlay"></g></svg>')
    return "".join(out)
