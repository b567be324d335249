"""Where a config's placements sit, and the labels every view writes there.

One walk over the placements (:func:`marks`); the views only choose how a mark reads: the Studio and
the canonical string say ``inout1`` / ``in1`` / ``out1`` (each entry numbers its own labels), the
report numbers placements (``#2 in``), and :func:`chain` writes the config's full chain with
``{in2}``-style labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Config


@dataclass(frozen=True)
class Mark:
    """Placement ``number`` (1-based, config order) has its ``role`` (inout, in, out) at ``point``."""

    point: str
    number: int
    role: str

    @property
    def canonical(self) -> str:
        """The label the canonical string writes here: ``inout1``, ``in1`` or ``out1``."""
        return f"{self.role}1"

    @property
    def numbered(self) -> str:
        """``#2`` for an ``{inout}``, ``#2 in`` / ``#2 out`` for the ends of an across placement."""
        return f"#{self.number}" if self.role == "inout" else f"#{self.number} {self.role}"


def marks(cfg: Config) -> dict[str, list[Mark]]:
    """``{"fc1:post": [Mark, ...]}``: every point that holds a placement, its marks in config order."""
    out: dict[str, list[Mark]] = {}
    for n, p in enumerate(cfg.placements, 1):
        ends = [(p.target, "inout")] if p.kind == "inout" else [(p.source, "in"), (p.target, "out")]
        for point, role in ends:
            out.setdefault(str(point), []).append(Mark(str(point), n, role))
    return out


def point_labels(cfg: Config, style: str = "canonical") -> dict[str, str]:
    """``{"fc1:post": "in1", ...}``: the labels at each point, space-separated without repeats
    (``style="canonical"``, the Studio's ``data-placement``) or comma-separated ``#n`` (``"numbered"``)."""
    if style not in ("canonical", "numbered"):
        raise ValueError(f"style must be 'canonical' or 'numbered', not {style!r}")
    sep = " " if style == "canonical" else ", "
    return {point: sep.join(dict.fromkeys(getattr(m, style) for m in ms)) for point, ms in marks(cfg).items()}


def links(cfg: Config) -> list[tuple[str, str]]:
    """``(source point, target point)`` of the across placements, sorted, without repeats."""
    return sorted({(str(p.source), str(p.target)) for p in cfg.placements if p.kind == "across"})


def chain(cfg: Config, graph: Any) -> str:
    """The config's full chain, its ``...`` written out: ``input->(fc1){in1}->(fc2)->...->output``."""
    at = marks(cfg)
    parts = ["input"]
    for node in graph.executed():
        pre = "".join(f"{{{m.role}{m.number}}}" for m in at.get(f"{node.path}:pre", []))
        post = "".join(f"{{{m.role}{m.number}}}" for m in at.get(f"{node.path}:post", []))
        parts.append(f"{pre}({node.path}){post}")
    return "->".join(parts + ["output"])
