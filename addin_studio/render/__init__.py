"""One renderer for every view (the Studio widget, the HTML report, the notebooks): placement labels,
the module graph laid out and drawn as SVG, and the loss history smoothed and plotted.

No Jupyter here; matplotlib is imported only where a PNG is made (:func:`history_png`).
"""

from .labels import Mark, chain, links, marks, point_labels
from .layout import Layout  # the layout() function: addin_studio.render.layout.layout
from .plot import history_png, series, smooth
from .svg import CSS, Marks, graph_svg, render_svg, styled
from .tree import Item, TreeBuilder

__all__ = [
    "CSS",
    "Item",
    "Layout",
    "Mark",
    "Marks",
    "TreeBuilder",
    "chain",
    "graph_svg",
    "history_png",
    "links",
    "marks",
    "point_labels",
    "render_svg",
    "series",
    "smooth",
    "styled",
]
