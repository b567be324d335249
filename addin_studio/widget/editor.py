"""What the Studio's clicks mean: build placements, keep the config canonical, attach it.

No Jupyter here: the widget forwards intents (a point clicked, a string applied, ...) to an
:class:`Editor`, which uses the core's public API only, so the picture and the string cannot disagree.
Every accepted config is attached at once (``editor.attachment``); a rejected one leaves the model,
the config and the attachment as they were and sets ``editor.error``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch.nn as nn

from .. import checkpoint  # noqa: F401  (registers Attachment.save/export_peft for the Studio's attachments)
from ..addins import available_addins, methods_for
from ..config import Config, ConfigError, Placement, Point, parse
from ..engine import Attachment, attach
from ..graph import ModuleGraph
from ..params import summary_line
from ..render.labels import point_labels  # noqa: F401  (re-exported: the Studio's labels)


@dataclass(frozen=True)
class Entry:
    """One line of the canonical string and the placements it stands for (``start:stop``)."""

    text: str
    start: int
    stop: int


def parse_group(group: str | None) -> tuple[str, int, int] | None:
    """``"blocks:0:12"`` -> ``("blocks", 0, 12)``."""
    if not group:
        return None
    container, start, stop = group.rsplit(":", 2)
    return container, int(start), int(stop)


def entries(cfg: Config) -> list[Entry]:
    """The canonical string's placement lines, each with the placements it compresses."""
    out, items, i = [], cfg.placements, 0
    while i < len(items):
        j = i + 1
        while j < len(items) and "\n" not in str(Config(items[i:j + 1])):
            j += 1
        out.append(Entry(str(Config(items[i:j])), i, j))
        i = j
    return out


def _swap_side(method: str) -> str:
    if method.endswith("_input"):
        return method[: -len("_input")] + "_output"
    if method.endswith("_output"):
        return method[: -len("_output")] + "_input"
    return method


class Editor:
    """Editing state of one Studio: the config, a started placement, the chosen add-in and method."""

    def __init__(self, model: nn.Module, graph: ModuleGraph, addins: Mapping[str, Callable] | None = None,
                 example_input: Any = None) -> None:
        self.model = model
        self.graph = graph
        self.example_input = example_input
        self.user_addins = dict(addins or {})
        self.config = Config()
        self.attachment: Attachment | None = None
        self.pending: tuple[Point, str | None] | None = None
        self.error = ""
        names = self.addin_names()
        self.addin = names[0] if names else ""
        self.method = ""
        self.side: str | None = None
        self._fit_method(None)

    # -- add-ins and methods -------------------------------------------------------------------
    def addin_names(self) -> list[str]:
        """Add-ins passed in first, then the built-ins."""
        return list(self.user_addins) + [n for n in available_addins() if n not in self.user_addins]

    def factory(self, name: str) -> Callable:
        if name in self.user_addins:
            return self.user_addins[name]
        return available_addins()[name]

    def methods(self, side: str | None = None) -> list[str]:
        """Methods of the chosen add-in that can run at ``side`` (both sides when None)."""
        if not self.addin:
            return []
        f = self.factory(self.addin)
        if side is None:
            return sorted(set(methods_for(f, "pre")) | set(methods_for(f, "post")))
        return methods_for(f, side)

    def select_addin(self, name: str) -> None:
        if name not in self.addin_names():
            raise ValueError(f"no add-in {name!r}; choose one of {', '.join(self.addin_names())}")
        self.addin = name
        self._fit_method(self.side)

    def select_method(self, name: str) -> None:
        if name not in self.methods(self.side):
            raise ValueError(f"{self.addin} has no method {name!r} that can run here; "
                             f"choose one of {', '.join(self.methods(self.side))}")
        self.method = name

    def _fit_method(self, side: str | None) -> bool:
        """Narrow the method to ``side``: keep the user's choice if it fits, else its other-side twin."""
        self.side = side
        valid = self.methods(side)
        if self.method in valid:
            return True
        twin = _swap_side(self.method)
        if twin in valid:
            self.method = twin
        else:
            preferred = [m for m in ("adapt_output", "adapt_input") if m in valid]
            self.method = (preferred or valid or [""])[0]
        return bool(self.method)

    # -- intents -------------------------------------------------------------------------------
    def click(self, point: str, group: str | None = None) -> bool:
        """A click on an insertion point: start a placement, or complete the started one."""
        try:
            p = Point.from_str(point)
        except ValueError as exc:
            return self._fail(str(exc))
        if p.module not in self.graph:
            return self._fail(f"no module {p.module!r} in this model")
        if not self.addin:
            return self._fail("choose an add-in first")
        if self.pending is None:
            self.pending = (p, group or None)
            self._fit_method(p.side)
            self.error = ""
            return True
        (src, src_group), self.pending = self.pending, None
        if (src_group or None) != (group or None):
            return self._fail("the two points must both lie in the same collapsed group of blocks, or "
                              "both outside it (expand the group to connect single blocks)")
        if not self._fit_method(p.side):
            return self._fail(f"{self.addin} has no method that can run {'before' if p.side == 'pre' else 'after'} "
                              f"a module (at {p})")
        method = self.method
        if src == p and "_across" in method and method.replace("_across", "") in self.methods(p.side):
            method = method.replace("_across", "")  # an {inout} has no cached feature to read across
        try:
            pairs = self._expand(src, p, group)
        except ValueError as exc:
            return self._fail(str(exc))
        placements = [Placement(self.addin, method, s, t) for s, t in pairs]
        cfg = self.config
        for pl in placements:
            cfg = cfg.add(pl)
        return self.commit(cfg)

    def cancel(self) -> None:
        self.pending = None
        self._fit_method(None)

    def apply(self, text: str) -> bool:
        """Parse and attach ``text``; on any error keep everything as it was."""
        try:
            cfg = parse(text)
        except ConfigError as exc:
            return self._fail(str(exc))
        self.pending = None
        return self.commit(cfg)

    def remove(self, entry: int) -> bool:
        """Remove line ``entry`` of the canonical string (all the placements it stands for)."""
        lines = entries(self.config)
        if not 0 <= entry < len(lines):
            return self._fail(f"no placement {entry}; there are {len(lines)}")
        e = lines[entry]
        kept = self.config.placements[: e.start] + self.config.placements[e.stop:]
        return self.commit(Config(kept, self.config.trainable))

    def clear(self) -> bool:
        self.pending = None
        return self.commit(Config())

    # -- helpers -------------------------------------------------------------------------------
    def _expand(self, src: Point, dst: Point, group: str | None) -> list[tuple[Point, Point]]:
        """One (source, target) pair, or one per block when the points lie in a collapsed group."""
        spec = parse_group(group)
        if spec is None:
            return [(src, dst)]
        container, start, stop = spec
        prefix = f"{container}.{start}" if container else str(start)

        def moved(pt: Point, i: int) -> Point:
            if pt.module != prefix and not pt.module.startswith(prefix + "."):
                raise ValueError(f"{pt} is not inside {prefix}")
            base = f"{container}.{i}" if container else str(i)
            return Point(base + pt.module[len(prefix):], pt.side)

        return [(moved(src, i), moved(dst, i)) for i in range(start, stop)]

    def _fail(self, message: str) -> bool:
        self.error = message
        return False

    def commit(self, cfg: Config) -> bool:
        """Attach ``cfg`` in place of the current config; on error re-attach the old one."""
        old = self.config
        if self.attachment is not None:
            self.attachment.detach()
            self.attachment = None
        try:
            self.attachment = self._attach(cfg)
        except (ConfigError, ValueError, TypeError) as exc:
            self.attachment = self._attach(old)
            return self._fail(str(exc))
        self.config = cfg
        self.error = ""
        self._fit_method(None)
        return True

    def _attach(self, cfg: Config) -> Attachment | None:
        if not cfg:
            return None
        return attach(self.model, cfg, addins=self.user_addins, example_input=self.example_input,
                      graph=self.graph)

    # -- views ---------------------------------------------------------------------------------
    def params_text(self) -> str:
        return summary_line(self.model, exact=True)

    def module_states(self) -> dict[str, str]:
        """``{path: "trainable" | "frozen" | "partial"}`` for modules with parameters, as they are now."""
        out = {}
        for path, module in self.model.named_modules():
            if not path or path not in self.graph:
                continue
            n = t = 0
            for p in module.parameters():
                n += p.numel()
                t += p.numel() if p.requires_grad else 0
            if n:
                out[path] = "frozen" if t == 0 else ("trainable" if t == n else "partial")
        return out
