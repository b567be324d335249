"""Several named adapters on one model: add, switch, disable, combine (LoRA), save and load each by name.

At most one adapter is attached at a time. An inactive adapter is detached — the model is then exactly
as without it — and keeps its add-in objects, which :func:`~addin_studio.attach` takes back
(``reuse=``) when the adapter is activated again, so trained weights survive switching. Base parameters
an adapter keeps trainable (``trainable(head)``) are the adapter's own too: their trained values are
stored while it is inactive and the base values put back (PEFT's ``modules_to_save``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .addins.lora import LoRA
from .checkpoint import load as load_checkpoint
from .config import Config, Placement, parse
from .config.errors import did_you_mean
from .engine import Attachment, attach
from .engine.attachment import base_parameter_names
from .engine.freezing import match_trainable
from .graph import trace
from .params import set_table_header


@dataclass
class _Adapter:
    config: Config
    addins: Mapping[str, Callable] | None
    objects: dict[Placement, nn.Module]
    kept: dict[str, torch.Tensor] = field(default_factory=dict)  # trained kept-trainable base values


class NamedAdapters:
    """Adapters attached to one model under names; one of them (or none) runs at a time.

    >>> named = studio.NamedAdapters(model)
    >>> named.add("a", "(LoRA.adapt_output, r=4): ...->(fc1){inout1}->...")   # the first becomes active
    >>> named.add("b", "(LoRA.adapt_output, r=8): ...->(fc1){inout1}->...")
    >>> named.set_active("b"); named.disable(); named.add_weighted_adapter("ab", {"a": 0.7, "b": 0.3})

    PEFT's ``add_adapter`` / ``set_adapter`` / ``disable_adapter`` / ``add_weighted_adapter`` /
    ``delete_adapter`` are :meth:`add` / :meth:`set_active` / :meth:`disable` (or :meth:`disabled`) /
    :meth:`add_weighted_adapter` / :meth:`remove`. The live :class:`~addin_studio.Attachment` of the
    active adapter is :attr:`attachment` (its ``parameters()`` for an optimizer, ``merge()``, ...).

    Args:
        model: The base model the adapters attach to.
        example_input: An input for one traced forward pass (checks ``{in}``-before-``{out}`` order and
            gives add-ins their feature shapes), or ``None``.
        **forward_kwargs: Extra keyword inputs of that forward pass.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """

    def __init__(self, model: nn.Module, example_input: Any = None, **forward_kwargs: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"NamedAdapters expects an nn.Module, got {type(model).__name__}")
        self.model = model
        self._example = example_input
        self._forward_kwargs = forward_kwargs
        self.graph = trace(model, example_input, **forward_kwargs)
        self._adapters: dict[str, _Adapter] = {}
        self._active: str | None = None
        self._att: Attachment | None = None
        self._base_values: dict[str, torch.Tensor] = {}
        self._listeners: list[Callable[[], None]] = []
        set_table_header(model, self.header)

    # -- inspection ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The adapters' names, in the order they were added."""
        return list(self._adapters)

    @property
    def active(self) -> str | None:
        """The name of the adapter that runs, or None (the bare model runs)."""
        return self._active

    @property
    def attachment(self) -> Attachment | None:
        """The live Attachment of the active adapter, or None."""
        return self._att

    def config(self, name: str) -> Config:
        """The config of adapter ``name``.

        Args:
            name: The adapter name.

        Returns:
            Its :class:`~addin_studio.Config`.

        Raises:
            ValueError: There is no adapter called ``name``.
        """
        return self._get(name).config

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    def __repr__(self) -> str:
        listed = ", ".join(f"{n} (active)" if n == self._active else n for n in self._adapters)
        return f"<NamedAdapters on {self.graph.root_class}: {listed or 'no adapter'}>"

    def header(self) -> str:
        """One line: the active adapter and all of them, the active one starred
        (``Active adapter: b (adapters: a, b*, ab)``); :func:`~addin_studio.trainable_table` starts
        with it."""
        listed = ", ".join(f"{n}*" if n == self._active else n for n in self._adapters) or "none yet"
        active = f"'{self._active}'" if self._active else "none (the bare model runs)"
        return f"Active adapter: {active} (adapters: {listed})"

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every add, load, update, switch, disable and remove (the Studio
        widget follows the adapters this way).

        Args:
            callback: A function of no arguments.

        Returns:
            A function that stops the calls.
        """
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _changed(self) -> None:
        for callback in list(self._listeners):
            callback()

    def summary(self) -> str:
        """Per adapter: active mark (``*``), name, add-ins, parameter count, then its config lines."""
        lines = [f"NamedAdapters on {self.graph.root_class} (active: {self._active or 'none'})"]
        for name, entry in self._adapters.items():
            count = sum(p.numel() for a in entry.objects.values() for p in a.parameters())
            mark = "*" if name == self._active else " "
            lines.append(f"{mark} {name}: {len(entry.objects)} add-in(s), {count:,} parameters")
            lines += [f"    {line}" for line in str(entry.config).splitlines()]
        return "\n".join(lines)

    # -- adding and removing ---------------------------------------------------------------------
    def add(
        self,
        name: str,
        config: Config | str,
        addins: Mapping[str, Callable] | None = None,
        *,
        activate: bool | None = None,
    ) -> None:
        """Attach ``config`` under ``name`` (checked as :func:`~addin_studio.attach` checks it; on error
        the model and the other adapters are as they were). The first adapter added becomes active, later
        ones do not (PEFT's ``get_peft_model`` / ``add_adapter``) unless ``activate=True``.

        Args:
            name: The new adapter's name (an identifier).
            config: A :class:`~addin_studio.Config` or a config string.
            addins: Add-in classes by the name the config uses (they take precedence over registered
                add-ins).
            activate: ``True`` makes it active, ``False`` does not; ``None`` activates only the first.

        Raises:
            ValueError: ``name`` is not an identifier or is taken.
        """
        self._check_new_name(name)
        cfg = parse(config) if isinstance(config, str) else config
        self._add(
            name,
            lambda: attach(self.model, cfg, addins, self._example, graph=self.graph, **self._forward_kwargs),
            addins,
            activate,
            cfg,
        )
        self._changed()

    def load(
        self,
        name: str,
        path: str | Path,
        addins: Mapping[str, Callable] | None = None,
        *,
        strict: bool = True,
        activate: bool | None = None,
    ) -> None:
        """Add the adapter saved in ``path`` (by :meth:`save` or ``Attachment.save``) under ``name``.

        Args:
            name: The new adapter's name (an identifier).
            path: The adapter-only checkpoint.
            addins: Add-in classes by the name the saved config uses.
            strict: With ``False`` only the modules the add-ins and kept-trainable weights touch must
                match the saved model (as in :func:`~addin_studio.load`).
            activate: ``True`` makes it active, ``False`` does not; ``None`` activates only the first.

        Raises:
            ValueError: ``name`` is not an identifier or is taken.
        """
        self._check_new_name(name)
        self._add(
            name,
            lambda: load_checkpoint(
                self.model,
                path,
                addins,
                self._example,
                strict=strict,
                graph=self.graph,
                **self._forward_kwargs,
            ),
            addins,
            activate,
            _saved_config(path),
        )
        self._changed()

    def update(self, name: str, config: Config | str, addins: Mapping[str, Callable] | None = None) -> None:
        """Give adapter ``name`` a new config (checked as :func:`~addin_studio.attach` checks it).

        Placements equal to ones it has (add-in, method, points, settings) keep their add-in objects and
        trained weights; base parameters it still keeps trainable keep their trained values. On error the
        model and every adapter are as they were. The adapter's active state does not change.

        Args:
            name: The adapter to change.
            config: The new :class:`~addin_studio.Config` or config string.
            addins: Add-in classes by the name the config uses.

        Raises:
            ValueError: There is no adapter called ``name``.
        """
        entry = self._get(name)
        cfg = parse(config) if isinstance(config, str) else config
        if not isinstance(cfg, Config):
            raise TypeError(f"update expects a config string or Config, got {type(cfg).__name__}")
        if not cfg:
            raise ValueError(
                f"an adapter needs at least one placement or trainable(...); to drop "
                f"'{name}' use remove('{name}')"
            )
        addins = entry.addins if addins is None else addins
        att, objects, previous = self._attach_aside(
            lambda: attach(
                self.model,
                cfg,
                addins,
                self._example,
                graph=self.graph,
                reuse=entry.objects,
                **self._forward_kwargs,
            )
        )
        kept = self._kept_params(att.config)
        self._adapters[name] = _Adapter(
            att.config, addins, objects, {n: t for n, t in entry.kept.items() if n in kept}
        )
        self._start(name, att)
        if previous != name:
            self._back_to(previous)
        self._changed()

    def remove(self, name: str) -> None:
        """Detach adapter ``name`` for good (if it is active, the bare model runs afterwards).

        Args:
            name: The adapter to remove.

        Raises:
            ValueError: There is no adapter called ``name``.
        """
        self._get(name)
        if name == self._active:
            self._deactivate()
        del self._adapters[name]
        self._changed()

    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"an adapter name must be an identifier (letters, digits, _), got {name!r}")
        if name in self._adapters:
            raise ValueError(
                f"there is already an adapter named '{name}'; remove('{name}') it first or "
                f"choose another name"
            )

    def _add(
        self,
        name: str,
        attach_new: Callable[[], Attachment],
        addins: Mapping[str, Callable] | None,
        activate: bool | None,
        cfg: Config | None,
        fill: Callable[[Attachment], None] | None = None,
    ) -> None:
        """Attach a new adapter with ``attach_new()`` (``cfg``: its config as far as known before, for the
        base values of what it keeps trainable, which a checkpoint overwrites)."""
        if activate is None:
            activate = not self._adapters
        base_values: dict[str, torch.Tensor] = {}

        def attach_checked() -> Attachment:
            # with the active adapter detached, these are the model's own values
            base_values.update({n: p.detach().clone() for n, p in self._kept_params(cfg or Config()).items()})
            return attach_new()

        def check(att: Attachment) -> None:
            if set(self._kept_params(att.config)) - set(base_values):
                raise RuntimeError(
                    "the adapter keeps base parameters trainable that its config did not "
                    "name before attaching"
                )
            if fill is not None:
                fill(att)

        att, objects, previous = self._attach_aside(attach_checked, check)
        self._adapters[name] = _Adapter(att.config, addins, objects)
        self._start(name, att, base_values)
        if not activate:
            self._back_to(previous)

    def _attach_aside(
        self,
        attach_new: Callable[[], Attachment],
        check: Callable[[Attachment], None] | None = None,
    ) -> tuple[Attachment, dict[Placement, nn.Module], str | None]:
        """Detach the active adapter, then ``attach_new()`` and check it; on any error detach it,
        re-activate the adapter that was active and re-raise. Returns ``(att, objects, previous)``."""
        previous = self._active
        self._deactivate()
        try:
            att = attach_new()
            try:
                objects = self._checked_objects(att)
                if check is not None:
                    check(att)
            except BaseException:
                att.detach()
                raise
        except BaseException:
            if previous is not None:
                self._activate(previous)
            raise
        return att, objects, previous

    @staticmethod
    def _checked_objects(att: Attachment) -> dict[Placement, nn.Module]:
        """``{placement: add-in}`` of a new attachment, refused if it cannot be switched off and on."""
        objects = {p: a for _, p, a in att.entries}
        if len(objects) != len(att.entries):
            raise ValueError(
                "a named adapter cannot place the same add-in twice at the same point "
                "with the same settings (it could not be told apart when switched)"
            )
        moving = [key for key, _, a in att.entries if getattr(a, "moves_base", False)]
        if moving:
            raise ValueError(
                f"'{moving[0]}' moves part of the base weight into the adapter "
                "(init=pissa/olora or kasa=true), so it cannot be switched off and on: attach "
                f"it alone with studio.attach"
            )
        return objects

    def _back_to(self, previous: str | None) -> None:
        """Detach the active adapter and activate ``previous`` again (None: stay bare)."""
        self._deactivate()
        if previous is not None:
            self._activate(previous)

    # -- switching -------------------------------------------------------------------------------
    def set_active(self, name: str) -> None:
        """Make adapter ``name`` the one that runs and trains (the others are detached).

        Args:
            name: The adapter to activate.

        Raises:
            ValueError: There is no adapter called ``name``.
        """
        self._get(name)
        if name != self._active:
            self._deactivate()
            self._activate(name)
            self._changed()

    def disable(self) -> None:
        """Run the bare model: detach the active adapter (its weights are kept; :meth:`set_active`
        brings it back)."""
        if self._active is not None:
            self._deactivate()
            self._changed()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """``with named.disabled():`` runs the bare model inside, the active adapter again after."""
        previous = self._active
        self._deactivate()
        try:
            yield
        finally:
            if previous is not None and previous in self._adapters:
                self._activate(previous)

    def _activate(self, name: str) -> None:
        entry = self._adapters[name]
        att = attach(
            self.model,
            entry.config,
            entry.addins,
            graph=self.graph,
            reuse=entry.objects,
            **self._forward_kwargs,
        )
        if any(a is not entry.objects.get(p) for _, p, a in att.entries):
            att.detach()
            raise RuntimeError(f"adapter '{name}' did not get its own add-ins back when re-attached")
        self._start(name, att)

    def _start(self, name: str, att: Attachment, base_values: dict[str, torch.Tensor] | None = None) -> None:
        """``att`` is attached: remember the base values of what it keeps trainable, put its own in."""
        entry = self._adapters[name]
        params = self._kept_params(entry.config)
        if base_values is None:
            base_values = {n: p.detach().clone() for n, p in params.items()}
        self._base_values = {n: base_values[n] for n in params}
        with torch.no_grad():
            for n, t in entry.kept.items():
                params[n].copy_(t)
        self._active, self._att = name, att

    def _deactivate(self) -> None:
        if self._active is None:
            return
        entry = self._adapters[self._active]
        assert self._att is not None
        self._att.detach()  # unmerges first, so the kept values below are the trained ones
        params = self._kept_params(entry.config)
        entry.kept = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, t in self._base_values.items():
                params[n].copy_(t)
        self._active, self._att, self._base_values = None, None, {}

    def _kept_params(self, cfg: Config) -> dict[str, nn.Parameter]:
        if not cfg.trainable:
            return {}
        names = base_parameter_names(self.model)
        keep, _ = match_trainable(names, cfg.trainable)
        return {n: p for n, p in self.model.named_parameters() if n in keep}

    def _get(self, name: str) -> _Adapter:
        if name not in self._adapters:
            close = did_you_mean(str(name), list(self._adapters))
            hint = f"; did you mean '{close[0]}'?" if close else ""
            known = ", ".join(self._adapters) or "none yet"
            raise ValueError(f"no adapter named {name!r} (adapters: {known}){hint}")
        return self._adapters[name]

    @contextmanager
    def _as_active(self, name: str) -> Iterator[Attachment]:
        """Adapter ``name`` active inside, the one before after (no listener hears of it)."""
        self._get(name)
        previous = self._active
        if previous != name:
            self._back_to(name)
        try:
            assert self._att is not None
            yield self._att
        finally:
            if previous != name:
                self._back_to(previous)

    # -- files -----------------------------------------------------------------------------------
    def save(self, name: str, path: str | Path) -> None:
        """Save adapter ``name`` as an adapter-only checkpoint (``Attachment.save``); :meth:`load` or
        ``studio.load`` reads it.

        Args:
            name: The adapter to save.
            path: The file to write.

        Raises:
            ValueError: There is no adapter called ``name``.
        """
        with self._as_active(name) as att:
            att.save(path)

    def export_peft(self, name: str, directory: str | Path) -> None:
        """Write adapter ``name`` as a Hugging Face PEFT adapter directory (``Attachment.export_peft``).

        Args:
            name: The adapter to export.
            directory: The folder to write ``adapter_model.safetensors`` and ``adapter_config.json`` into.

        Raises:
            ValueError: There is no adapter called ``name``.
        """
        with self._as_active(name) as att:
            att.export_peft(directory)

    # -- combining -------------------------------------------------------------------------------
    def add_weighted_adapter(
        self, new_name: str, weights: Mapping[str, float], *, activate: bool = False
    ) -> None:
        """Add ``new_name``, a LoRA adapter whose update is ``sum_i weights[i] * delta_i`` exactly.

        PEFT's ``add_weighted_adapter(combination_type="cat")``: the factors are concatenated (rank =
        sum of the ranks) and each adapter's weight and scale are folded into its rows of ``A``; the new
        adapter has ``alpha = r`` (scale 1) and the first adapter's dropout. The adapters must be plain
        LoRA (no ``dora``, no ``bias``) at the same layers with the same method, ``param`` and
        ``layout``, and keep no base parameter trainable.

        Args:
            new_name: The new adapter's name (an identifier).
            weights: The weight of each existing adapter, by name.
            activate: Whether the new adapter becomes active.

        Raises:
            ValueError: ``new_name`` is taken or not an identifier, an adapter is unknown, a weight is
                not a number, or the adapters cannot be combined.
        """
        self._check_new_name(new_name)
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError("add_weighted_adapter needs weights as {adapter name: weight, ...}")
        for name, w in weights.items():
            self._get(name)
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise ValueError(f"the weight of '{name}' must be a number, got {w!r}")
        names = list(weights)
        layouts = [self._lora_layout(name) for name in names]
        first = layouts[0]
        for name, layout in zip(names[1:], layouts[1:]):
            if set(layout) != set(first):
                only = sorted(set(first) ^ set(layout), key=str)[0]
                raise ValueError(
                    f"'{names[0]}' and '{name}' do not adapt the same layers the same way "
                    f"(e.g. {only[0]} at {only[2]}): a weighted combination needs "
                    f"the same placements"
                )
        placements = []
        for sig, (p, addin) in first.items():
            total = sum(layout[sig][1].r for layout in layouts)
            settings = {k: v for k, v in p.settings.items() if k in ("param", "layout", "dropout")}
            settings.update(r=total, alpha=total)
            placements.append((sig, Placement(p.addin, p.method, p.source, p.target, settings)))
        cfg = Config([p for _, p in placements])

        def fill(att: Attachment) -> None:
            new = {p: a for _, p, a in att.entries}
            with torch.no_grad():
                for sig, p in placements:
                    parts = [layout[sig][1] for layout in layouts]
                    A = torch.cat([a.lora_A * (float(weights[n]) * a.scaling) for n, a in zip(names, parts)])
                    B = torch.cat([a.lora_B for a in parts], dim=1)
                    new[p].lora_A.copy_(A)
                    new[p].lora_B.copy_(B)

        self._add(
            new_name,
            lambda: attach(self.model, cfg, None, graph=self.graph, **self._forward_kwargs),
            None,
            activate,
            cfg,
            fill,
        )
        self._changed()

    def _lora_layout(self, name: str) -> dict[tuple, tuple[Placement, LoRA]]:
        """``{(method, source, target, param, layout): (placement, LoRA)}`` of adapter ``name``, checked
        to be linearly combinable."""
        entry = self._get(name)
        if entry.config.trainable:
            raise ValueError(
                f"adapter '{name}' keeps base parameters trainable "
                f"(trainable({', '.join(entry.config.trainable)})): a weighted combination "
                f"is defined for LoRA weights only"
            )
        out: dict[tuple, tuple[Placement, LoRA]] = {}
        for p, addin in entry.objects.items():
            where = f"'{name}' has {p.addin}.{p.method} at {p.target}"
            if not isinstance(addin, LoRA):
                raise ValueError(f"add_weighted_adapter combines LoRA adapters only: {where}")
            if addin.dora or hasattr(addin, "lora_bias"):
                variant = "dora=true" if addin.dora else "bias=true"
                raise ValueError(
                    f"{where} with {variant}, which is not linear in its factors: it cannot "
                    f"be combined by weights"
                )
            if addin.grouped:
                raise ValueError(
                    f"{where} on a grouped convolution in PEFT's layout, whose rank channels "
                    f"are split among the groups: it cannot be combined by concatenation"
                )
            sig = (p.method, p.source, p.target, addin.param, addin.layout)
            if sig in out:
                raise ValueError(f"{where} twice: a weighted combination needs one LoRA per layer")
            out[sig] = (p, addin)
        return out


def _saved_config(path: str | Path) -> Config | None:
    """The config in an adapter checkpoint's metadata (header only), or None if it cannot be read
    (then loading the file says what is wrong)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return parse((f.metadata() or {})["config"])
    except Exception:  # noqa: BLE001 - load() reports the problem with the file
        return None
