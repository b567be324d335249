"""The Studio widget (anywidget): the page draws and sends intents; this class decides everything.

The intents the page may send (``{"type": name, **fields}``) are one table, :attr:`Studio.INTENTS`:
name -> handler, whether it may run while training, whether it edits the config (see
:mod:`~.intents`). The page receives the names and fields from it (the ``intents`` trait) and spells
none of them. Each handler hands over to :class:`~.editor.Editor`, the training run or the export
helpers, and the result comes back as traits.
"""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import anywidget
import torch.nn as nn
import traitlets as t

from ..config import format_path
from ..graph import trace
from ..named import NamedAdapters
from . import training
from ..render.labels import links, point_labels
from .editor import STRATEGIES, Editor, entries
from .export import code_snippet, export_peft, save_adapters
from .intents import BUSY, Intent, protocol, table as intent_table
from ..render.layout import layout
from ..render.plot import history_png, series
from .printout import printout
from ..render.svg import render_svg, styled
from ..render.tree import TreeBuilder, human

_HERE = Path(__file__).parent


def _main_loop() -> asyncio.AbstractEventLoop | None:
    """The kernel's asyncio loop when called from a cell (ipykernel runs cells in it).

    Outside a Jupyter kernel there is no loop to hand work to: a loop that merely looks "running" in
    this thread (e.g. Playwright's sync API, which parks its loop in a greenlet) would never run the
    callbacks, so updates are then applied directly.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return None
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _display_parent() -> dict | None:
    """The parent header of the cell being executed (so output can be sent there later)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return None
    ip = get_ipython()
    pub = getattr(ip, "display_pub", None)
    header = getattr(pub, "parent_header", None)
    return dict(header) if header else None


def shared_note(node: Any) -> str:
    """The details line of a module reached under several names ('' for any other module)."""
    if not node.aliases:
        return ""
    calls = f"; it ran {node.calls} times in the traced pass" if node.calls > 1 else ""
    return (
        f"shared module: also reachable as {', '.join(format_path(a) for a in node.aliases)}{calls}. "
        f"Add-ins placed here hook the module object, so they run wherever it runs (under every "
        f"parent)"
    )


def _layout_advice(paths: list[str]) -> str:
    """Export PEFT's refusal of balanced-layout conv LoRAs, naming the widget's control that fixes it."""
    more = f" and {len(paths) - 1} more conv layer(s)" if len(paths) > 1 else ""
    return (
        f"export-peft failed: the LoRA on '{paths[0]}'{more} is in the balanced layout, which PEFT "
        f'cannot hold. Tick "PEFT layout" in the Strategy row (the same as choosing layout = peft '
        f"in the LoRA settings): the LoRAs are rebuilt in PEFT's layout (new weights), then Train "
        f"and Export PEFT again."
    )


def _entry_rows(cfg: Any) -> list[dict]:
    """The placements list: one row per line of the canonical string, with ``group`` (its add-in,
    method and settings: ``LoRA.adapt_output, r=4``), ``where`` (the rest of the line) and ``count``
    (the placements it stands for); the page groups rows by ``group``."""
    rows = []
    for i, e in enumerate(entries(cfg)):
        head, sep, where = e.text.partition("): ")
        grouped = e.text.startswith("(") and bool(sep)
        rows.append(
            {
                "index": i,
                "text": e.text,
                "group": head[1:] if grouped else e.text,
                "where": where if grouped else "",
                "count": e.stop - e.start,
            }
        )
    return rows


class Studio(anywidget.AnyWidget):
    """Place add-ins on a model by clicking its graph; the config string updates live.

    ``w = Studio(model, example_input=x, addins={"MLPAddin": MLPAddin}, train_loader=loader)``, then
    ``w`` as a cell's last line. ``w.config`` (synced both ways), ``w.error``, ``w.attachment``
    (the live :class:`~addin_studio.Attachment`, or None) and ``w.history`` give the results back.
    Every accepted config is attached to ``model`` at once (base frozen, add-ins trainable).

    Args:
        model: The model to place add-ins on.
        example_input: An input for one traced forward pass (shapes, call order, point checks).
        addins: Your own add-in classes by name (``{"MLPAddin": MLPAddin}``), offered besides the
            registered ones.
        train_loader: Training batches; with them the Studio can train the add-ins.
        val_loader: Validation batches for training.
        epochs: The number of epochs a training run makes.
        lr: The learning rate of a training run.
        trainer_options: Further keyword arguments for the :class:`Trainer` of a training run.
        config: A config string to start with.
        layout_engine: How the graph is laid out: ``"auto"`` (Graphviz dot if present), ``"dot"`` or
            ``"builtin"``.
        auto_collapse: Whether to collapse containers of large models at first so that at most 400
            boxes are drawn.
        export_dir: The folder that saving adapters and exporting PEFT write into.
        adapters: With ``NamedAdapters(model)`` the Studio shows the active named adapter: an Adapter
            list switches it (or runs the bare model), edits change the active adapter
            (``NamedAdapters.update``), and switching from code (``named.set_active("b")``) is shown at
            once.
        **kwargs: Passed on to ``anywidget.AnyWidget``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``adapters`` is not the :class:`NamedAdapters` of this same model.
    """

    _esm = _HERE / "studio.js"
    _css = _HERE / "studio.css"  # the page's look; the graph's (render/graph.css) travels in its svg

    config = t.Unicode("").tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    svg = t.Unicode("").tag(sync=True)
    notice = t.Unicode("").tag(sync=True)
    lines = t.List().tag(sync=True)
    labels = t.Dict().tag(sync=True)
    links = t.List().tag(sync=True)
    entries = t.List().tag(sync=True)
    states = t.Dict().tag(sync=True)
    addin_names = t.List().tag(sync=True)
    addin = t.Unicode("").tag(sync=True)
    methods = t.List().tag(sync=True)
    method = t.Unicode("").tag(sync=True)
    pending = t.Unicode("").tag(sync=True)
    selected = t.Dict().tag(sync=True)
    params = t.Unicode("").tag(sync=True)
    state = t.Unicode("idle").tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    can_train = t.Bool(False).tag(sync=True)
    plot = t.Dict().tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    settings_form = t.List().tag(sync=True)
    strategies = t.List(list(STRATEGIES)).tag(sync=True)
    strategy = t.Unicode("").tag(sync=True)
    peft_layout = t.Bool(False).tag(sync=True)
    running_stats = t.Bool(False).tag(sync=True)  # running_stats(*) in the string
    has_norm_stats = t.Bool(False).tag(sync=True)  # the model has BatchNorm-like layers
    preview = t.Dict().tag(sync=True)
    search = t.Unicode("").tag(sync=True)
    matches = t.List().tag(sync=True)
    reveal = t.Unicode("").tag(sync=True)
    grads = t.Dict().tag(sync=True)
    grad_table = t.List().tag(sync=True)
    runs = t.List().tag(sync=True)
    code = t.Unicode("").tag(sync=True)
    exported = t.Dict().tag(sync=True)
    adapter_names = t.List().tag(sync=True)
    active_adapter = t.Unicode("").tag(sync=True)
    intents = t.Dict().tag(sync=True)  # the protocol: intent name -> its fields (from INTENTS)

    #: runs the plot overlays (the latest ones)
    OVERLAY_RUNS = 3

    def __init__(
        self,
        model: nn.Module,
        example_input: Any = None,
        addins: Mapping[str, Callable] | None = None,
        train_loader: Iterable | None = None,
        val_loader: Iterable | None = None,
        *,
        epochs: int = 1,
        lr: float = 1e-3,
        trainer_options: Mapping[str, Any] | None = None,
        config: str = "",
        layout_engine: str = "auto",
        auto_collapse: bool = True,
        export_dir: str | Path = "studio_export",
        adapters: NamedAdapters | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Studio needs a torch.nn.Module, got {type(model).__name__}")
        if adapters is not None and (not isinstance(adapters, NamedAdapters) or adapters.model is not model):
            raise ValueError(
                "adapters= must be the NamedAdapters of this same model (studio.NamedAdapters(model))"
            )
        training.stop_all()  # a re-run cell must not leave an old run training with no Stop button
        super().__init__(**kwargs)
        self._loop = _main_loop()
        self._main_thread = threading.current_thread()
        self._parent: dict | None = _display_parent()
        self.model = model
        self.train_loader, self.val_loader = train_loader, val_loader
        self.trainer_options = {"epochs": epochs, "lr": lr, **dict(trainer_options or {})}
        self.layout_engine = layout_engine
        if adapters is not None:
            with adapters.disabled():  # the model's own graph, without the active adapter's add-ins
                self._graph = trace(model, example_input)
        else:
            self._graph = trace(model, example_input)
        self._tree = TreeBuilder(self._graph)
        self._expanded: set[str] = set()
        self._collapsed = self._tree.default_collapsed() if auto_collapse else set()
        self._editor = Editor(model, self._graph, addins, example_input, named=adapters)
        self._named = adapters
        self._unfollow = (
            adapters.on_change(lambda: self._dispatch(self._adapters_changed))
            if adapters is not None
            else None
        )
        self._editor.busy = lambda: self.state == "training"
        self.export_dir = Path(export_dir)
        self._run: training.TrainingRun | None = None
        self._runs: list[dict] = []
        self._history: dict = {}
        self._syncing = False
        self._run_config = ""  # the config the shown update norms were measured on
        self._preview_targets = ""  # the targets of the previewed strategy
        lines, exact = printout(model)
        self.lines = [line.as_dict() for line in lines]
        self.title = (
            f"{self._graph.root_class} · {len(self._graph)} modules · "
            f"{human(self._graph.num_params)} parameters"
        )
        self._relayout()
        if config:
            self._editor.apply(config)
        self._sync()
        if not exact:
            self.notice = (
                self.notice + " " if self.notice else ""
            ) + "(the printout view could not reproduce print(model) exactly)"
        self.on_msg(self._on_msg)

    # -- Python-side API ---------------------------------------------------------------------------
    @property
    def attachment(self):
        """The live :class:`~addin_studio.Attachment` of the current config (None when empty)."""
        return self._editor.attachment

    @property
    def history(self) -> dict:
        """The last training run's history (``loss``, ``lr`` per step; ``val_acc1`` per epoch)."""
        return dict(self._history)

    @property
    def graph(self):
        return self._graph

    @t.observe("config")
    def _config_set(self, change: dict) -> None:
        if self._syncing or change["new"] == str(self._editor.config):
            return
        if self.state == "training":
            self.error = BUSY
        else:
            self._editor.apply(change["new"])
        self._sync()

    def stop(self) -> None:
        """Ask a running training to end after its current step (nothing happens when none runs)."""
        if self._run is not None:
            self._run.stop()

    def close(self) -> None:
        """Stop a running training and close the widget."""
        run, unfollow = getattr(self, "_run", None), getattr(self, "_unfollow", None)
        if run is not None:  # (getattr: a Studio whose __init__ refused its arguments is closed too)
            run.stop()
        if unfollow is not None:
            unfollow()
        super().close()

    def _repr_mimebundle_(self, **kwargs: Any):
        self._parent = _display_parent() or self._parent
        return super()._repr_mimebundle_(**kwargs)

    # -- threading --------------------------------------------------------------------------------
    def _dispatch(self, fn: Callable, *args: Any) -> None:
        """Run ``fn`` on the kernel's main loop (all trait traffic stays on one thread)."""
        loop = self._loop
        if loop is None or loop.is_closed() or threading.current_thread() is self._main_thread:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        # comm handlers may run on a kernel subshell thread: hand over to the main loop
        self._dispatch(self._handle, content)

    def _handle(self, content: Any) -> None:
        try:
            self.handle(content)
        except Exception as exc:  # the kernel must never crash from a click
            self.error = f"internal error while handling {content!r}: {exc!r}"

    # -- intents: one table (widget/intents.py), shared with the page through the `intents` trait ------
    def handle(self, msg: Mapping[str, Any]) -> None:
        """Apply one intent from the page (also the way tests drive the widget).

        An unknown intent, or one that cannot run while training, sets :attr:`error` instead.

        Args:
            msg: The intent, ``{"type": <intent name>, ...}`` with the intent's own fields.
        """
        kind = msg.get("type") if isinstance(msg, Mapping) else None
        intent = self.INTENTS.get(kind) if isinstance(kind, str) else None
        if intent is None:
            self.error = f"unknown request {kind!r}"
            return
        if self.state == "training" and not intent.while_training:
            self.error = BUSY
            return
        if intent.edits:
            self._editor.message = ""
        intent.run(self, msg)
        if intent.edits:
            self._sync()

    def _on_point(self, point: Any = "", group: Any = None) -> None:
        self._editor.click(str(point), group or None)

    def _on_pick(self, select: Callable[[str], None], name: Any) -> None:
        try:
            select(str(name))
            self._editor.error = ""
        except ValueError as exc:
            self._editor.error = str(exc)

    def _on_addin(self, name: Any = "") -> None:
        self._on_pick(self._editor.select_addin, name)

    def _on_method(self, name: Any = "") -> None:
        self._on_pick(self._editor.select_method, name)

    def _on_apply(self, text: Any = "") -> None:
        self._editor.apply(str(text))

    def _on_remove(self, index: Any = None) -> None:
        if isinstance(index, str) and index.strip().isdigit():
            index = int(index)
        if isinstance(index, int) and not isinstance(index, bool):
            self._editor.remove(index)
        else:
            self._editor.error = f"remove needs the number of a listed placement, got {index!r}"

    def _on_clear(self) -> None:
        self._editor.clear()

    def _on_cancel(self) -> None:
        self._editor.cancel()

    def _on_setting(self, name: Any = "", value: Any = "", addin: Any = None) -> None:
        """A setting of the selected add-in, or of ``addin`` (the "PEFT layout" box sends LoRA's)."""
        ed = self._editor
        ed.set_setting(str(name), value, str(addin or "") or None)  # None: the selected add-in
        if self.preview and not ed.error:  # a previewed strategy shows the new settings
            self._preview(self.strategy, self._preview_targets)

    def _on_running_stats(self, value: Any = None) -> None:
        self._editor.set_running_stats(value in (True, "true"))

    def _on_apply_strategy(self, name: Any = "", targets: Any = "") -> None:
        self._editor.apply_strategy(str(name), str(targets))
        self.preview = {}

    def _on_strategy(self, name: Any = "", targets: Any = "") -> None:
        self._preview(str(name), str(targets))

    def _on_adapter(self, name: Any = "") -> None:
        self._editor.set_active_adapter(str(name))

    def _on_run(self, n: Any = None) -> None:
        self._restore_run(n)

    def _on_train(self) -> None:
        self._editor.message = ""
        self._train()

    def _on_select(self, path: Any = "", range: Any = None) -> None:  # noqa: A002 - the field's name
        self._select(str(path), range)

    def _on_toggle(self, path: Any = "") -> None:
        self._toggle(str(path))

    def _on_search(self, query: Any = "") -> None:
        self._search(str(query))

    def _on_save_adapters(self) -> None:
        self._write_files("save-adapters", save_adapters, "saved adapters to")

    def _on_export_peft(self) -> None:
        self._write_files("export-peft", export_peft, "exported PEFT adapter to")

    def _on_copy_code(self) -> None:
        self.code = code_snippet(self._editor.config, self._editor.user_addins)
        self.status = "Python code for this attachment: copied (also shown below)"

    def _on_stop(self) -> None:
        self.stop()

    #: every intent the page may send (``{"type": name, **fields}``; fields: the handler's parameters).
    #: while_training=False: refused while a run trains; edits=True: clears the editor's message
    #: before and pushes its state to the page after.
    INTENTS: Mapping[str, Intent] = intent_table(
        Intent("point", _on_point, while_training=False, edits=True),
        Intent("apply", _on_apply, while_training=False, edits=True),
        Intent("remove", _on_remove, while_training=False, edits=True),
        Intent("clear", _on_clear, while_training=False, edits=True),
        Intent("setting", _on_setting, while_training=False, edits=True),
        Intent("running-stats", _on_running_stats, while_training=False, edits=True),
        Intent("apply-strategy", _on_apply_strategy, while_training=False, edits=True),
        Intent("run", _on_run, while_training=False, edits=True),
        Intent("train", _on_train, while_training=False),
        Intent("addin", _on_addin, edits=True),
        Intent("method", _on_method, edits=True),
        Intent("cancel", _on_cancel, edits=True),
        Intent("adapter", _on_adapter, edits=True),  # the editor refuses a switch while training
        Intent("select", _on_select),
        Intent("toggle", _on_toggle),
        Intent("search", _on_search),
        Intent("strategy", _on_strategy),
        Intent("save-adapters", _on_save_adapters),
        Intent("export-peft", _on_export_peft),
        Intent("copy-code", _on_copy_code),
        Intent("stop", _on_stop),
    )

    @t.default("intents")
    def _intents_default(self) -> dict[str, list[str]]:
        return protocol(self.INTENTS)

    # -- views ------------------------------------------------------------------------------------
    def _sync(self) -> None:
        """Push the editor's state to the traits, as one message to the page."""
        with self.hold_sync():
            self._sync_traits()

    def _sync_traits(self) -> None:
        ed = self._editor
        self._syncing = True
        try:
            self.config = str(ed.config)
        finally:
            self._syncing = False
        self.error = ed.error
        self.labels = point_labels(ed.config)
        self.links = links(ed.config)
        self.entries = _entry_rows(ed.config)
        self.states = ed.module_states()
        self.addin_names = ed.addin_names()
        self.addin = ed.addin
        self.methods = ed.offered_methods()
        self.method = ed.method
        self.pending = str(ed.pending[0]) if ed.pending else ""
        self.params = ed.params_text()
        self.can_train = self.train_loader is not None and self.state == "idle"
        self.settings_form = ed.settings_form()
        self.peft_layout = ed.peft_layout()
        self.running_stats = ed.running_stats()
        self.has_norm_stats = ed.has_norm_stats()
        if (self.grads or self.grad_table) and self.state == "idle" and str(ed.config) != self._run_config:
            self.grads, self.grad_table = {}, []  # measured on another config: they would mislead
        if self._named is not None:
            self.adapter_names = self._named.names
            self.active_adapter = self._named.active or ""
        if ed.message and self.state == "idle":
            self.status = ed.message
        if self.selected.get("path"):
            self.selected = {
                **self.selected,
                "placements": ed.placements_at(self.selected["path"]),
                "trainable": ed.trainable_text(self.selected["path"], self.states),
            }

    def _adapters_changed(self) -> None:
        """The named adapters changed (from code or from this widget): show the active one."""
        self._editor.follow_named()
        self._sync()

    def _relayout(self) -> None:
        items = self._tree.build(self._expanded, self._collapsed)
        lay = layout(items, self.layout_engine)
        self.notice = lay.notice
        self.svg = styled(render_svg(items, lay))

    def _toggle(self, path: str) -> None:
        if path in self._tree.groups:
            self._expanded ^= {path}
        elif path in self._graph and not self._graph[path].is_leaf:
            self._collapsed ^= {path}
        else:
            self.error = f"{path!r} is not a container that can be expanded or collapsed"
            return
        self._relayout()

    def _select(self, path: str, rng: Any = None) -> None:
        if path not in self._graph:
            self.error = f"no module {path!r} in this model"
            return
        node = self._graph[path]
        path = node.path  # another name of a shared module selects the module under its canonical name
        info = {
            "path": path,
            "written": format_path(path),
            "class": node.class_name,
            "params": node.num_params,
            "placements": self._editor.placements_at(path),
            "trainable": self._editor.trainable_text(path),
            "input": list(node.input_shape) if node.input_shape else None,
            "output": list(node.output_shape) if node.output_shape else None,
            "extra": node.extra_repr,
            "aliases": [format_path(a) for a in node.aliases],
            "note": shared_note(node),
        }
        if rng:
            info["range"] = str(rng)
        self.selected = info

    def _search(self, query: str) -> None:
        """Mark matching modules; open the collapsed groups and containers around the first one."""
        self.search = query
        found = self._editor.search(query)
        self.matches = found
        self.error = "" if found or not query.strip() else f"no module matches {query!r}"
        if not found:
            self.reveal = ""
            return
        first = found[0]
        parts = first.split(".")
        changed = False
        for i in range(1, len(parts)):
            anc = ".".join(parts[:i])
            if anc in self._tree.groups and anc not in self._expanded:
                self._expanded.add(anc)
                changed = True
            if anc in self._collapsed:
                self._collapsed.discard(anc)
                changed = True
        if changed:
            self._relayout()
        self.reveal = first

    def _preview(self, name: str, targets: str) -> None:
        """Show what a strategy would place (labels on the graph, its string) without applying it."""
        self.strategy = name
        self._preview_targets = targets
        if not name:
            self.preview = {}
            return
        try:
            cfg = self._editor.strategy_config(name, targets)
        except (ValueError, TypeError) as exc:
            self.preview = {}
            self.error = f"{name}: {exc}"
            return
        self.error = ""
        self.preview = {
            "labels": point_labels(cfg),
            "config": str(cfg),
            "count": len(cfg.placements),
            "trainable": list(cfg.trainable),
        }

    def _write_files(self, kind: str, write: Callable[[Any, Path], Path], done: str) -> None:
        """Save adapters / export PEFT into ``export_dir``; ``kind`` names it in ``exported`` and errors."""
        att = self._editor.attachment
        if att is None:
            self.error = "nothing to export: place an add-in or apply a strategy first"
            return
        try:
            path = write(att, self.export_dir)
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            balanced = self._editor.balanced_conv_loras() if write is export_peft else []
            self.error = f"{kind} failed: {exc}" if not balanced else _layout_advice(balanced)
            return
        self.error = ""
        self.exported = {**self.exported, kind: str(path)}
        self.status = f"{done} {path}"

    def _restore_run(self, n: Any) -> None:
        run = next((r for r in self._runs if r["n"] == n), None)
        if run is None:
            self._editor.error = (
                f"no run {n!r}; runs: {', '.join(str(r['n']) for r in self._runs) or 'none yet'}"
            )
            return
        if self._editor.apply(run["config"]):
            self._editor.message = f"restored the string of run {n}" + (
                f"; {self._editor.message}" if self._editor.message else ""
            )

    # -- training ---------------------------------------------------------------------------------
    def _train(self) -> None:
        if self.train_loader is None:
            self.error = "no train_loader was given to Studio(...): nothing to train on"
            return
        if self._run is not None and self._run.alive:
            self.error = "training is already running"
            return
        att = self._editor.attachment

        def make(callbacks: list):
            from ..train import Trainer

            return Trainer(
                self.model,
                self.train_loader,
                self.val_loader,
                callbacks=callbacks,
                progress=False,
                attachment=att,
                **self.trainer_options,
            )

        try:
            run = training.TrainingRun(
                make, self._dispatch, self._on_update, self._on_done, att.entries if att is not None else ()
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            self.error = f"cannot train: {exc}"
            return
        self._run = run
        self.error = ""
        self.state = "training"
        self.can_train = False
        self.plot = self._with_runs(series([], [], run.trainer.total_steps))
        self.grads = {}
        self.grad_table = []
        self._run_config = str(self._editor.config)
        self.status = f"training: starting ({run.trainer.total_steps} steps)"
        run.start()

    def _on_update(self, snapshot: dict) -> None:
        if self.state != "training":
            return
        self.status = snapshot.pop("status")
        self.grads = snapshot.pop("grads", {})
        self.plot = self._with_runs(snapshot)

    def _with_runs(self, data: dict) -> dict:
        """The plot's data plus the smoothed curves of the last finished runs (overlaid)."""
        data["runs"] = [
            {"n": r["n"], "smooth": r["curve"], "val": r["val"]} for r in self._runs[-self.OVERLAY_RUNS :]
        ]
        return data

    def _on_done(self, run: training.TrainingRun) -> None:
        # one message to the page: a page that sees state "idle" also sees the run's final status
        with self.hold_sync():
            self._finish(run)
        self._show_static_plot(run)

    def _finish(self, run: training.TrainingRun) -> None:
        self._history = dict(run.history)
        data = series(run.losses, run.val_acc, run.trainer.total_steps)
        if run.losses:
            self._runs.append(self._run_record(run, data))
            self.runs = list(self._runs)
        self.plot = self._with_runs(data)
        self.grads = run.norms.by_point(run.norms.last)
        self.grad_table = run.norms.table()
        self.status = run.summary()
        self.state = "idle"
        if run.error is not None:
            self.error = f"training failed: {run.error}"
        self._editor.error = self.error
        self._editor.message = ""
        self._sync()

    def _run_record(self, run: training.TrainingRun, data: dict) -> dict:
        """What the run history keeps: string, settings, curve and final metrics."""
        cfg = self._editor.config
        settings: dict[str, dict] = {}
        for p in cfg.placements:
            settings.setdefault(p.addin, dict(p.settings))
        h = run.history
        metrics = {
            "steps": run.trainer.step,
            "loss": round(run.losses[-1], 5) if math.isfinite(run.losses[-1]) else None,
        }
        for k in ("val_loss", "val_acc1", "val_acc5"):
            if h.get(k):
                metrics[k] = [round(float(v), 4) for v in h[k]]
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return {
            "n": len(self._runs) + 1,
            "config": str(cfg),
            "settings": settings,
            "curve": data["smooth"],
            "val": data["val"],
            "metrics": metrics,
            "trainable": trainable,
            "summary": run.summary(),
        }

    @property
    def run_history(self) -> list[dict]:
        """Every finished run: ``n``, ``config``, ``settings``, ``curve`` (smoothed loss), ``metrics``."""
        return [dict(r) for r in self._runs]

    def _show_static_plot(self, run: training.TrainingRun) -> None:
        """Display a PNG of the run in the widget's cell, so a saved notebook keeps the plot.

        Outside a kernel (no cell to show it in) no PNG is drawn at all: matplotlib costs ~0.1 s a run.
        """
        losses = [v for v in run.losses if math.isfinite(v)]
        if not losses:
            return
        try:
            from IPython import get_ipython
            from IPython.display import Image, display
        except ImportError:  # pragma: no cover
            return
        ip = get_ipython()
        pub = getattr(ip, "display_pub", None)
        if ip is None or self._parent is None or not hasattr(pub, "set_thread_parent"):
            return
        try:
            png = history_png(losses, run.val_acc)
        except Exception as exc:  # matplotlib problems must not hide the result
            self.status += f" (no static plot: {exc})"
            return
        token = pub.set_thread_parent(self._parent)
        try:
            display(Image(png, format="png"))
        finally:
            pub.reset_thread_parent(token)
