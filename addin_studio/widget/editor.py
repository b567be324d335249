"""What the Studio's clicks mean: build placements, keep the config canonical, attach it.

No Jupyter here: the widget forwards intents (a point clicked, a string applied, ...) to an
:class:`Editor`, which uses the core's public API only, so the picture and the string cannot disagree.
Every accepted config is attached at once (``editor.attachment``); a rejected one leaves the model,
the config and the attachment as they were and sets ``editor.error``.
"""

from __future__ import annotations

import fnmatch
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch.nn as nn

from .. import checkpoint  # noqa: F401  (registers Attachment.save/export_peft for the Studio's attachments)
from ..addins import available_addins, methods_for
from ..config import Config, ConfigError, Placement, Point, parse
from ..config.emit import entry_spans
from ..engine import Attachment, attach
from ..graph import ModuleGraph
from ..named import NamedAdapters
from ..params import summary_line
from ..render.labels import point_labels  # noqa: F401  (re-exported: the Studio's labels)
from . import settings as form

#: the strategies the picker offers
STRATEGIES = ("lora_all", "lora", "bitfit", "head_only", "layernorm", "partial_k", "fact_tt", "fact_tk")


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
    items = cfg.placements
    return [Entry(str(Config(items[a:b])), a, b) for a, b in entry_spans(items)]


def _swap_side(method: str) -> str:
    if method.endswith("_input"):
        return method[: -len("_input")] + "_output"
    if method.endswith("_output"):
        return method[: -len("_output")] + "_input"
    return method


class Editor:
    """Editing state of one Studio: the config, a started placement, the chosen add-in and method."""

    def __init__(
        self,
        model: nn.Module,
        graph: ModuleGraph,
        addins: Mapping[str, Callable] | None = None,
        example_input: Any = None,
        named: NamedAdapters | None = None,
    ) -> None:
        self.model = model
        self.named = named  # edits go to its active adapter (NamedAdapters.update)
        self.graph = graph
        self.example_input = example_input
        self.user_addins = dict(addins or {})
        self.config = Config()
        self.attachment: Attachment | None = None
        self.pending: tuple[Point, str | None] | None = None
        self.error = ""
        self.addin = self.default_addin()
        self.method = ""
        self.side: str | None = None
        self.settings: dict[str, dict[str, Any]] = {}  # add-in -> settings for new placements
        # add-in -> fields set in the form to the add-in's own default: the string leaves them out, but a
        # strategy with another default (lora_all's r=3 vs LoRA's r=8) must still get the chosen value
        self.chosen_defaults: dict[str, dict[str, Any]] = {}
        self.message = ""  # what the last edit did to trained add-ins
        self.busy: Callable[[], bool] = lambda: False  # True while a run trains: edits are refused
        self._following = named.active if named is not None else None  # the active adapter shown
        self.follow_named()
        self._fit_method(None)

    # -- named adapters ------------------------------------------------------------------------
    def follow_named(self) -> None:
        """Show the named adapters' active adapter (nothing when none is active); :attr:`message` says
        so when it is another one than shown before."""
        if self.named is None:
            return
        active = self.named.active
        if active != self._following:
            self._following = active
            self.message = (
                f"adapter '{active}' is active" if active else "no adapter is active: the bare model runs"
            )
        self.config = self.named.config(active) if active is not None else Config()
        self.attachment = self.named.attachment
        self.pending = None

    def set_active_adapter(self, name: str) -> bool:
        """Run named adapter ``name`` ("" runs the bare model)."""
        if self.named is None:
            return self._fail("this Studio has no named adapters (pass adapters=NamedAdapters(model))")
        if self.busy():
            return self._fail("stop training before switching adapters")
        try:
            if name:
                self.named.set_active(name)
            else:
                self.named.disable()
        except ValueError as exc:
            return self._fail(str(exc))
        self.follow_named()
        self.error = ""
        return True

    # -- add-ins and methods -------------------------------------------------------------------
    def addin_names(self) -> list[str]:
        """Add-ins passed in first, then the built-ins."""
        return list(self.user_addins) + [n for n in available_addins() if n not in self.user_addins]

    def default_addin(self) -> str:
        """The add-in the list starts on: the user's own (the first passed in), else LoRA."""
        names = self.addin_names()
        if self.user_addins:
            return names[0]
        return "LoRA" if "LoRA" in names else (names[0] if names else "")

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

    def offered_methods(self) -> list[str]:
        """The method list to show: with a started placement at side S, the ``{inout}`` methods at S
        and the across methods for either side of the ``{out}`` still to be clicked; else all."""
        if self.pending is None:
            return self.methods(None)
        side = self.pending[0].side
        inout = [m for m in self.methods(side) if "across" not in m]
        across = [m for m in self.methods(None) if "across" in m]
        return inout + across

    def select_addin(self, name: str) -> None:
        if name not in self.addin_names():
            raise ValueError(f"no add-in {name!r}; choose one of {', '.join(self.addin_names())}")
        self.addin = name
        self._fit_method(self.side)

    def select_method(self, name: str) -> None:
        offered = self.offered_methods()
        if name not in offered:
            raise ValueError(
                f"{self.addin} has no method {name!r} that can run here; choose one of {', '.join(offered)}"
            )
        self.method = name

    # -- settings ------------------------------------------------------------------------------
    def settings_form(self) -> list[dict]:
        """The selected add-in's settings: name, kind, default, help and the value shown."""
        if not self.addin:
            return []
        shown = self.shown_settings()
        out = []
        for f in form.schema(self.factory(self.addin)):
            d = f.as_dict()
            d["value"] = shown.get(f.name, f.default)
            out.append(d)
        return out

    def shown_settings(self, addin: str | None = None) -> dict[str, Any]:
        """Settings of an add-in (default: the selected one) as the form shows them and new placements
        take them: those of its last placement in the string, else the ones chosen in the form."""
        name = addin or self.addin
        placed = [p for p in self.config.placements if p.addin == name]
        if placed:
            return dict(placed[-1].settings)
        return dict(self.settings.get(name, {}))

    def set_setting(self, name: str, text: Any, addin: str | None = None) -> bool:
        """A field of the settings form changed: new placements and every placement of the add-in
        (default: the selected one) in the string take the value (a default value is left out of the
        string). LoRA's ``layout`` also goes into the LoRA strategies' configs."""
        addin = addin or self.addin
        if addin and addin not in self.addin_names():
            return self._fail(f"no add-in {addin!r}; choose one of {', '.join(self.addin_names())}")
        fields = {f.name: f for f in form.schema(self.factory(addin))} if addin else {}
        if name not in fields:
            return self._fail(
                f"{addin or 'no add-in'} has no setting {name!r} (it has: {', '.join(fields) or 'none'})"
            )
        try:
            value = form.convert(fields[name], text)
        except ValueError as exc:
            return self._fail(str(exc))

        def updated(current: Mapping[str, Any]) -> dict[str, Any]:
            new = dict(current)
            if value == fields[name].default and type(value) is type(fields[name].default):
                new.pop(name, None)
            else:
                new[name] = value
            return new

        self.settings[addin] = updated(self.settings.get(addin, {}))
        at_default = self.chosen_defaults.setdefault(addin, {})
        if name in self.settings[addin]:
            at_default.pop(name, None)
        else:
            at_default[name] = value
        if not any(p.addin == addin for p in self.config.placements):
            self.error = ""
            return True
        placements = [
            Placement(p.addin, p.method, p.source, p.target, updated(p.settings)) if p.addin == addin else p
            for p in self.config.placements
        ]
        return self.commit(Config(placements, self.config.trainable, running_stats=self.config.running_stats))

    # -- normalization statistics ----------------------------------------------------------------
    def has_norm_stats(self) -> bool:
        """Whether the model has layers with running statistics (BatchNorm and friends)."""
        from ..engine.attachment import addin_children
        from ..engine.norm_stats import norm_layers

        return bool(norm_layers(self.model, skip=addin_children(self.model)))

    def running_stats(self) -> bool:
        """Whether the config lets normalization layers update their statistics (``running_stats(...)``)."""
        return bool(self.config.running_stats)

    def set_running_stats(self, on: bool) -> bool:
        """``running_stats(*)`` on or off: every BatchNorm-like layer's statistics follow the training
        data (and ship with the adapters), or stay as the base model's (the default)."""
        if on and not self.has_norm_stats():
            return self._fail("this model has no layer with running statistics (BatchNorm and friends)")
        return self.commit(self.config.with_running_stats(["*"] if on else []))

    # -- PEFT layout -----------------------------------------------------------------------------
    def peft_layout(self) -> bool:
        """Whether LoRA is in PEFT's layout (``layout=peft``): for new LoRA placements and the LoRA
        strategies (the LoRA settings, or the string's last LoRA)."""
        return self.shown_settings("LoRA").get("layout") == "peft"

    def balanced_conv_loras(self) -> list[str]:
        """The convolutions whose attached LoRA is in the balanced layout where PEFT's differs (what
        Export PEFT refuses), in string order."""
        from ..addins.lora import LoRA

        if self.attachment is None:
            return []
        out = []
        for _, placement, addin in self.attachment.entries:
            if not isinstance(addin, LoRA) or getattr(addin, "layout", "balanced") == "peft":
                continue
            module = self.model.get_submodule(placement.target.module)
            if isinstance(module, nn.modules.conv._ConvNd) and (
                addin.lora_B.shape[0] != module.out_channels or module.groups != 1
            ):
                out.append(placement.target.module)
        return out

    # -- strategies ----------------------------------------------------------------------------
    def strategy_config(self, name: str, targets: str = "") -> Config:
        """The config strategy ``name`` gives this model (LoRA ones read the LoRA settings form: r, alpha,
        dropout and layout; FacT ones the FacT form; ``targets`` is lora's module names, or partial_k's k).

        Raises ValueError with the strategy's own message when it does not apply."""
        from .. import strategies

        if name not in STRATEGIES:
            raise ValueError(f"no strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
        if self.busy():  # computing one detaches the add-ins for a moment
            raise ValueError("stop training before choosing a strategy")
        lora = {**self.chosen_defaults.get("LoRA", {}), **self.shown_settings("LoRA")}
        lora_kw = {k: lora[k] for k in ("r", "alpha", "dropout") if k in lora}
        with self._bare():
            if name == "lora_all":
                cfg = strategies.lora_all(self.model, graph=self.graph, **lora_kw)
            elif name == "lora":
                names = [t for t in targets.replace(",", " ").split() if t]
                if not names:
                    raise ValueError("lora(targets) needs module names, e.g. qkv or fc1, fc2")
                cfg = strategies.lora(self.model, names, graph=self.graph, **lora_kw)
            elif name == "bitfit":
                cfg = strategies.bitfit(self.model)
            elif name == "layernorm":
                cfg = strategies.layernorm(self.model)
            elif name == "partial_k":
                if not targets.strip().isdigit():
                    raise ValueError(
                        f"partial_k needs k, the number of last blocks to train, e.g. 2; "
                        f"got {targets.strip()!r}"
                    )
                cfg = strategies.partial_k(self.model, int(targets))
            elif name in ("fact_tt", "fact_tk"):  # the paper's layers, with the FacT settings form's values
                kind = name[-2:]
                fact = {**self.chosen_defaults.get(f"FacT_{kind}", {}), **self.shown_settings(f"FacT_{kind}")}
                cfg = strategies.fact(
                    self.model,
                    kind=kind,
                    graph=self.graph,
                    **{k: fact[k] for k in ("r", "scale", "dropout") if k in fact},
                )
            else:
                cfg = strategies.head_only(self.model)
        if name in ("lora_all", "lora") and lora.get("layout") == "peft":  # the "PEFT layout" choice
            cfg = Config(
                [
                    Placement(p.addin, p.method, p.source, p.target, {**p.settings, "layout": "peft"})
                    if p.addin == "LoRA"
                    else p
                    for p in cfg.placements
                ],
                cfg.trainable,
            )
        if self.config.running_stats and not cfg.running_stats:  # the statistics choice stays
            cfg = cfg.with_running_stats(self.config.running_stats)
        return cfg

    def apply_strategy(self, name: str, targets: str = "") -> bool:
        """Replace the config with strategy ``name``'s; the add-in list (and so the settings form) then
        shows the add-in the strategy placed."""
        try:
            cfg = self.strategy_config(name, targets)
        except (ValueError, TypeError) as exc:
            return self._fail(f"{name}: {exc}")
        self.pending = None
        if not self.commit(cfg):
            return False
        placed = [p.addin for p in cfg.placements if p.addin in self.addin_names()]
        if placed and placed[-1] != self.addin:
            self.addin = placed[-1]
            self._fit_method(None)
        return True

    @contextmanager
    def _bare(self) -> Iterator[None]:
        """The model without the current add-ins (strategies must not see them), then back."""
        att = self.attachment
        if att is None:
            yield
            return
        if self.named is not None:
            self.attachment = None
            try:
                with self.named.disabled():
                    yield
            finally:
                self.attachment = self.named.attachment
            return
        reuse = self._reusable()
        att.detach()
        self.attachment = None
        try:
            yield
        finally:
            self.attachment = self._attach(self.config, reuse)

    # -- search --------------------------------------------------------------------------------
    def search(self, query: str, limit: int = 200) -> list[str]:
        """Module paths whose path or class name contains ``query`` (case-insensitive), or match it
        as a glob when it has ``*``, ``?`` or ``[``. Paths may be written ``blocks[3]`` as in strings."""
        q = re.sub(r"\[(\d+)\]", r".\1", query.strip().lower())  # blocks[3] -> blocks.3
        if not q:
            return []
        glob = any(c in q for c in "*?[")
        out = []
        for node in self.graph.nodes:
            path, cls = node.path.lower(), node.class_name.lower()
            hit = (
                (fnmatch.fnmatchcase(path, q) or fnmatch.fnmatchcase(cls, q))
                if glob
                else (q in path or q in cls)
            )
            if hit:
                out.append(node.path)
                if len(out) >= limit:
                    break
        return out

    def _fit_method(self, side: str | None) -> bool:
        """Narrow the method to ``side``: keep the user's choice if it fits, else its other-side twin."""
        self.side = side
        valid = self.offered_methods() if self.pending is not None else self.methods(side)
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
        if self.busy():
            return self._fail("stop training before changing the config")
        if self.pending is None:
            self.pending = (p, group or None)
            self.side = p.side
            offered = self.offered_methods()
            if self.method not in offered:
                self.method = next(
                    (m for m in (f"adapt_{'input' if p.side == 'pre' else 'output'}",) if m in offered),
                    offered[0] if offered else "",
                )
            self.error = ""
            return True
        (src, src_group), self.pending = self.pending, None
        if (src_group or None) != (group or None):
            return self._fail(
                "the two points must both lie in the same collapsed group of blocks, or "
                "both outside it (expand the group to connect single blocks)"
            )
        method = self._method_for(src, p)
        if not method:
            where = "before" if p.side == "pre" else "after"
            return self._fail(
                f"{self.addin}.{self.method} cannot run {where} a module (at {p}); choose "
                f"one of {', '.join(self.methods(p.side)) or 'nothing: no method fits'}"
            )
        try:
            pairs = self._expand(src, p, group)
        except ValueError as exc:
            return self._fail(str(exc))
        settings = self.shown_settings()
        placements = [Placement(self.addin, method, s, t, settings) for s, t in pairs]
        cfg = self.config
        for pl in placements:
            cfg = cfg.add(pl)
        if self.commit(cfg):
            self.method = method  # the method shown is the one written into the string
            return True
        return False

    def _method_for(self, src: Point, dst: Point) -> str:
        """The method the completed placement writes: the chosen one when it fits, else its twin at
        the clicked side (an {inout} has no cached feature, so ``adapt_across_x`` -> ``adapt_x``; an
        {in}...{out} pair needs a method that reads it, so ``adapt_x`` -> ``adapt_across_x``)."""
        valid = self.methods(dst.side)
        m = self.method
        if src == dst and "across" in m:
            m = m.replace("_across", "")
        elif src != dst and m.startswith("adapt_") and "across" not in m:
            m = m.replace("adapt_", "adapt_across_", 1)
        if m in valid:
            return m
        twin = _swap_side(m)
        return twin if twin in valid else ""

    def cancel(self) -> None:
        self.pending = None
        self._fit_method(None)

    def apply(self, text: str) -> bool:
        """Parse and attach ``text``; on any error keep everything as it was."""
        if self.busy():
            return self._fail("stop training before changing the config")
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
        kept = self.config.placements[: e.start] + self.config.placements[e.stop :]
        return self.commit(Config(kept, self.config.trainable, running_stats=self.config.running_stats))

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
            return Point(base + pt.module[len(prefix) :], pt.side)

        return [(moved(src, i), moved(dst, i)) for i in range(start, stop)]

    def _fail(self, message: str) -> bool:
        self.error = message
        return False

    def commit(self, cfg: Config) -> bool:
        """Attach ``cfg`` in place of the current config; on error re-attach the old one.

        Placements equal to current ones (add-in, method, points, settings) keep their add-in object
        and its trained weights; :attr:`message` says which were built new or re-initialised."""
        if self.busy():
            return self._fail("stop training before changing the config")
        old = self.config
        reuse = self._reusable()
        if self.named is not None:
            return self._commit_named(old, cfg, reuse)
        if self.attachment is not None:
            self.attachment.detach()
            self.attachment = None
        try:
            self.attachment = self._attach(cfg, reuse)
        except (ConfigError, ValueError, TypeError) as exc:
            self.attachment = self._attach(old, reuse)
            return self._fail(str(exc))
        if self.attachment is not None:  # another name of a shared module: its canonical name
            cfg = self.attachment.config
        self.message = self._describe_change(old, cfg, reuse)
        self.config = cfg
        self.error = ""
        self.side = None
        if self.method not in self.methods(None):
            self._fit_method(None)
        return True

    def _commit_named(self, old: Config, cfg: Config, reuse: Mapping[Placement, nn.Module]) -> bool:
        assert self.named is not None
        name = self.named.active
        if name is None:
            return self._fail(
                "no adapter is active: choose one in the Adapter list before editing "
                "(or add one with NamedAdapters.add)"
            )
        try:
            self.named.update(name, cfg, self.user_addins or None)
        except (ConfigError, ValueError, TypeError) as exc:
            return self._fail(str(exc))
        self.follow_named()
        self.message = self._describe_change(old, cfg, reuse)
        self.error = ""
        self.side = None
        if self.method not in self.methods(None):
            self._fit_method(None)
        return True

    def _reusable(self) -> dict[Placement, nn.Module]:
        if self.attachment is None:
            return {}
        return {p: a for _, p, a in self.attachment.entries}

    def _describe_change(self, old: Config, new: Config, reuse: Mapping[Placement, nn.Module]) -> str:
        kept = [p for p in new.placements if p in reuse]
        fresh = [p for p in new.placements if p not in reuse]
        old_points = {(p.source, p.target) for p in old.placements}
        reinit = [p for p in fresh if (p.source, p.target) in old_points]
        parts = []
        if kept:
            parts.append(f"kept {len(kept)} add-in(s) with their weights")
        if reinit:
            names = ", ".join(f"{p.addin} at {p.target}" for p in reinit[:4])
            more = f" and {len(reinit) - 4} more" if len(reinit) > 4 else ""
            parts.append(f"re-initialised {len(reinit)} (changed): {names}{more}")
        if len(fresh) > len(reinit):
            parts.append(f"built {len(fresh) - len(reinit)} new")
        return "; ".join(parts)

    def _attach(self, cfg: Config, reuse: Mapping[Placement, nn.Module] | None = None) -> Attachment | None:
        if not cfg:
            return None
        return attach(
            self.model,
            cfg,
            addins=self.user_addins,
            example_input=self.example_input,
            graph=self.graph,
            reuse=reuse,
        )

    def placements_at(self, path: str) -> list[str]:
        """The canonical entries that place something before, after or across ``path``."""
        out = []
        for e in entries(self.config):
            ps = self.config.placements[e.start : e.stop]
            if any(pt.module == path for p in ps for pt in (p.source, p.target)):
                out.append(e.text)
        return out

    # -- views ---------------------------------------------------------------------------------
    def trainable_text(self, path: str, states: Mapping[str, str] | None = None) -> str:
        """What trains at module ``path``, counted as :func:`~addin_studio.trainable_table` counts:
        its own parameters (``frozen``, ``trainable``, ``partial``) and the add-ins placed on it
        (``frozen base, LoRA trainable (4,352 params)``)."""
        state = (states if states is not None else self.module_states()).get(path, "none")
        words = {
            "frozen": "frozen",
            "trainable": "trainable",
            "partial": "partly trainable",
            "none": "no parameters",
        }
        names: list[str] = []
        count = 0
        seen: set[int] = set()
        for _, p, addin in self.attachment.entries if self.attachment is not None else ():
            if path not in (p.source.module, p.target.module):
                continue
            if p.addin not in names:
                names.append(p.addin)
            for q in addin.parameters():
                if q.requires_grad and id(q) not in seen:
                    seen.add(id(q))
                    count += q.numel()
        if not names:
            return words[state]
        base = "no parameters of its own" if state == "none" else f"{words[state]} base"
        trained = (
            f"{', '.join(names)} trainable ({count:,} params)"
            if count
            else f"{', '.join(names)} (no trainable parameters)"
        )
        return f"{base}, {trained}"

    def params_text(self) -> str:
        return summary_line(self.model, exact=True)

    def module_states(self) -> dict[str, str]:
        """``{path: "trainable" | "frozen" | "partial"}`` for modules with parameters, as they are now."""
        # one pass over the parameters, summed into every enclosing module (a pass per module is
        # quadratic in the depth and was most of a click's time on a ViT)
        total: dict[str, int] = {}
        train: dict[str, int] = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            k = p.numel()
            trained = k if p.requires_grad else 0
            path = name
            while "." in path:
                path = path.rsplit(".", 1)[0]
                total[path] = total.get(path, 0) + k
                train[path] = train.get(path, 0) + trained
        return {
            path: "frozen" if train[path] == 0 else ("trainable" if train[path] == n else "partial")
            for path, n in total.items()
            if n and path in self.graph
        }
