"""attach() and the Attachment object: hooks in, add-ins registered, base frozen — and all undone."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, cast

import torch
from torch import nn

from ..config import Config, ConfigError, Placement, parse
from ..graph import ModuleGraph, trace
from .forwards import ForwardAction, add_forward_action, remove_forward_action
from .freezing import hold, release
from .hooks import CacheAction, FirstForwardCheck, PostHook, PreHook, RunAction
from .norm_stats import (
    disown_stats,
    hold_stats,
    norm_layers,
    own_stats,
    release_stats,
    split_norms,
    stat_buffers,
)
from .resolve import Resolved, canonical_config, resolve
from ..addins.weights import (
    WeightAction,
    add_weight_action,
    is_computed,
    remove_weight_action,
    stored_tensors,
    still,
    stored_weight,
    weight_actions,
    write_weight,
)


class AddinDict(nn.ModuleDict):
    """The add-ins of one attachment, registered as a child of the model.

    Its ``forward`` is the identity so that a model whose root is an ``nn.Sequential`` (which calls
    every child in turn) still computes the same thing.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return args[0] if args else None


def addin_children(model: nn.Module) -> list[str]:
    """Names of the model's children that hold an attachment's add-ins."""
    return [name for name, child in model.named_children() if isinstance(child, AddinDict)]


def base_parameter_names(model: nn.Module) -> set[str]:
    """Names of the model's own parameters: without those of any attachment's add-ins."""
    skip = tuple(f"{name}." for name in addin_children(model))
    return {n for n, _ in model.named_parameters() if not n.startswith(skip)}


# per module, per parameter: the (attachment id, add-in key) merged into it, last on top. Unmerging
# restores a snapshot taken at merge time, which is only right for the merge on top.
_MERGE_STACKS: "weakref.WeakKeyDictionary[nn.Module, dict[str, list[tuple[int, str]]]]" = (
    weakref.WeakKeyDictionary()
)


class Attachment:
    """Add-ins attached to a model by :func:`attach`. Undo everything with :meth:`detach`.

    Built by :func:`attach` (or :func:`load`), not by hand. Use it as a context manager to detach on
    exit.

    Attributes:
        model: The model the add-ins are attached to.
        config: The parsed :class:`Config` that placed them.
        graph: The :class:`ModuleGraph` traced from the model.
        addins: The add-in modules by key (an ``nn.ModuleDict``).
    """

    def __init__(
        self,
        model: nn.Module,
        config: Config,
        graph: ModuleGraph,
        resolved: list[Resolved],
        keep: set[str],
        freeze: bool,
        norms: tuple[list[str], list[str]] = ([], []),
    ) -> None:
        """Called by :func:`attach` and :func:`load` once everything is validated.

        Args:
            model: The model the add-ins are attached to.
            config: The parsed config that placed them.
            graph: The module graph traced from the model.
            resolved: The validated placements with their add-in objects.
            keep: Names of base parameters kept trainable.
            freeze: Whether the base model is frozen while attached.
            norms: Paths of the normalization layers whose running statistics are held fixed (when
                ``freeze``), and of those whose statistics update.
        """
        self.model = model
        self.config = config
        self.graph = graph
        self.addins = AddinDict({r.key: r.addin for r in resolved})
        self._resolved = resolved
        self._keep = keep
        self._freeze = freeze
        self._held = False  # whether this attachment holds the base frozen (freezing.hold)
        self._hooks: dict[tuple[str, str], PreHook | PostHook] = {}
        self._handles: dict[tuple[str, str], Any] = {}
        self._run_actions: dict[str, tuple[tuple[str, str], RunAction]] = {}
        self._weight_actions: dict[str, WeightAction] = {}
        self._forward_actions: dict[str, ForwardAction] = {}
        self._merged: dict[str, dict[str, torch.Tensor]] = {}
        self._positions: dict[str, int] = {}  # a merged weight method's place in its layer's chain
        self._untied: dict[str, dict[str, nn.Parameter]] = {}
        self._moved: dict[str, dict[str, torch.Tensor]] = {}  # base snapshots of add-ins that move_base
        self._first_check: FirstForwardCheck | None = None
        self._child_name: str | None = None
        # normalization layers: those whose running statistics stay fixed, and those whose statistics
        # update (their buffers belong to this attachment: snapshot at attach, restored at detach)
        self._frozen_norms = list(norms[0]) if freeze else []
        self.updating_norms: list[str] = list(norms[1])
        self._stats_held: list[nn.Module] = []
        self._stats_snapshot: dict[str, dict[str, torch.Tensor]] = {}
        self.attached = False

    # -- lifecycle -------------------------------------------------------------------------------
    def _apply(self) -> None:
        modules = dict(self.model.named_modules())
        try:
            name = "addins"
            n = 1
            while hasattr(self.model, name):
                name = f"addins_{n}"
                n += 1
            self.model.add_module(name, self.addins)
            self.addins.train(self.model.training)  # an eval model gets eval add-ins (no dropout)
            self._child_name = name
            if self._freeze:
                hold(self.model, self, self._keep, base_parameter_names(self.model))
                self._held = True
            self._hold_norms(modules)
            self._move_bases(modules)
            expected: dict[tuple[str, str], list[str]] = {}
            for r in self._resolved:
                p = r.placement
                if r.weight_param is not None:
                    action = WeightAction(r.addin, p.method, _label(p))
                    add_weight_action(modules[p.target.module], r.weight_param, action)
                    self._weight_actions[r.key] = action
                    continue
                if r.forward:
                    module = modules[p.target.module]
                    expected.setdefault((p.target.module, p.target.side), []).append(_label(p))
                    forward = ForwardAction(module, r.addin, p.method, _label(p))
                    add_forward_action(module, forward)
                    self._forward_actions[r.key] = forward
                    continue
                for point in {(p.source.module, p.source.side), (p.target.module, p.target.side)}:
                    expected.setdefault(point, []).append(_label(p))
                run = RunAction(r.addin, p.method, p.kind == "across", _label(p))
                if p.kind == "across":
                    self._hook(modules, p.source.module, p.source.side).actions.append(
                        CacheAction(r.addin, run)
                    )
                self._hook(modules, p.target.module, p.target.side).actions.append(run)
                self._run_actions[r.key] = ((p.target.module, p.target.side), run)
            if expected and not self.graph.traced:
                self._first_check = FirstForwardCheck(expected, self.graph.root_class)
                self._first_check.install(self.model, modules)
            self.attached = True
        except BaseException:
            self._undo()
            raise

    def _move_bases(self, modules: Mapping[str, nn.Module]) -> None:
        """Let add-ins that start from part of the base weight (LoRA's PiSSA/OLoRA inits, flag
        ``moves_base``) take it out, after snapshotting the layer's parameters for :meth:`_undo`."""
        for r in self._resolved:
            if getattr(r.addin, "moves_base", False):
                module = modules[r.placement.target.module]
                self._moved[r.key] = {
                    n: p.detach().clone() for n, p in module._parameters.items() if p is not None
                }
                _push_stack(module, self._moved[r.key], (id(self), "move:" + r.key))
                with torch.no_grad():
                    r.addin.move_base(module)  # type: ignore[operator]  # an add-in method (moves_base)

    def _hold_norms(self, modules: Mapping[str, nn.Module]) -> None:
        """Freeze the running statistics of the frozen normalization layers; snapshot the others'."""
        for path in self.updating_norms:
            buffers = stat_buffers(modules[path])
            self._stats_snapshot[path] = {n: t.detach().clone() for n, t in buffers.items()}
            own_stats(modules[path], self)
        for path in self._frozen_norms:
            hold_stats(modules[path], self)
            self._stats_held.append(modules[path])

    def _release_norms(self) -> None:
        for module in self._stats_held:
            release_stats(module, self)
        self._stats_held.clear()
        if self._stats_snapshot:
            modules = dict(self.model.named_modules())
            with torch.no_grad():
                for path, snapshot in self._stats_snapshot.items():
                    disown_stats(modules[path], self)
                    for n, t in snapshot.items():
                        buffer = modules[path]._buffers.get(n)
                        if isinstance(buffer, torch.Tensor) and not t.is_meta:
                            buffer.copy_(t)
            self._stats_snapshot.clear()

    def statistics(self) -> dict[str, torch.Tensor]:
        """The running-statistics buffers this attachment owns.

        Those of the normalization layers whose statistics update (``running_stats(...)`` or trained
        parameters). They are saved with the adapters and restored at :meth:`detach`.

        Returns:
            The buffers by name: ``{"<layer>.<buffer>": tensor}``.
        """
        modules = dict(self.model.named_modules())
        return {
            f"{path}.{n}" if path else n: t
            for path in self.updating_norms
            for n, t in stat_buffers(modules[path]).items()
        }

    def _hook(self, modules: Mapping[str, nn.Module], path: str, side: str) -> PreHook | PostHook:
        key = (path, side)
        if key not in self._hooks:
            module = modules[path]
            hook: PreHook | PostHook
            if side == "pre":
                hook = PreHook()
                handle = module.register_forward_pre_hook(hook)
            else:
                hook = PostHook()
                handle = module.register_forward_hook(hook)
            self._hooks[key] = hook
            self._handles[key] = handle
        return self._hooks[key]

    def _undo(self) -> None:
        self._check_restorable(moves=True)
        if self._merged:
            self.unmerge()
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._hooks.clear()
        if self._first_check is not None:
            self._first_check.remove()
            self._first_check = None
        if self._weight_actions:
            modules = dict(self.model.named_modules())
            for r in self._resolved:
                action = self._weight_actions.pop(r.key, None)
                if action is not None and r.weight_param is not None:
                    remove_weight_action(modules[r.placement.target.module], r.weight_param, action)
        if self._forward_actions:
            modules = dict(self.model.named_modules())
            for r in self._resolved:
                forward = self._forward_actions.pop(r.key, None)
                if forward is not None:
                    remove_forward_action(modules[r.placement.target.module], forward)
        if self._moved:
            modules = dict(self.model.named_modules())
            for r in reversed(self._resolved):
                snapshot = self._moved.pop(r.key, None)
                if snapshot is not None:
                    module = modules[r.placement.target.module]
                    _pop_stack(module, snapshot, (id(self), "move:" + r.key))
                    with torch.no_grad():
                        for n, t in snapshot.items():
                            module._parameters[n].copy_(t)
        self._release_norms()
        if self._held:
            release(self.model, self, base_parameter_names(self.model))
            self._held = False
        if self._child_name is not None and self._child_name in self.model._modules:
            del self.model._modules[self._child_name]
        self._child_name = None
        _clear_caches(self)
        for _, run in self._run_actions.values():
            run.last = None
        self.attached = False

    def detach(self) -> None:
        """Remove every hook and add-in, restore ``requires_grad`` flags and (if merged) weights.

        Afterwards the model is exactly as before :func:`attach`. Calling it twice is harmless.

        Raises:
            RuntimeError: A weight it would restore was changed since by another attachment (a merge, a
                PiSSA/KaSA base move); detach or unmerge that attachment first.
        """
        self._undo()

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    # -- inspection ------------------------------------------------------------------------------
    @property
    def entries(self) -> list[tuple[str, Placement, nn.Module]]:
        """``(key, placement, addin)`` for every placement, in config order."""
        return [(r.key, r.placement, r.addin) for r in self._resolved]

    @property
    def merged(self) -> bool:
        return bool(self._merged)

    @property
    def untied(self) -> bool:
        """Whether a merge gave a tied weight its own copy (``merge(untie=True)``)."""
        return bool(self._untied)

    def parameters(self):
        """The add-ins' parameters (what an optimizer for the add-ins alone needs)."""
        return self.addins.parameters()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<Attachment {state}: {len(self._resolved)} add-in(s) on {self.graph.root_class}>"

    # -- merge -----------------------------------------------------------------------------------
    def merge(self, untie: bool = False) -> None:
        """Fold mergeable add-ins into their base weights.

        Mergeable are weight methods, and hook add-ins that define ``merge(module)`` (e.g. LoRA). Their
        hooks/properties are switched off, so a merged model pays nothing extra. :meth:`unmerge`
        restores the weights exactly.

        Args:
            untie: A weight shared with another module (tied weights, e.g. a language model's
                ``lm_head`` and its input embedding) is refused, since merging would change the other
                module too; ``untie=True`` gives the merged module its own copy of the weight until
                :meth:`unmerge` / :meth:`detach`, which put the shared parameter back.

        Raises:
            ValueError: A weight is tied to another module and ``untie`` is false, an add-in cannot merge
                into its module, or another add-in that stays attached also reads the weight; nothing is
                merged then.
            RuntimeError: The attachment was detached, or the model is FSDP-sharded (merge an unsharded
                copy loaded with :func:`load`).
        """
        self._require_attached("merge")
        if _is_sharded(self.model):
            raise RuntimeError(
                "cannot merge an FSDP-sharded model: its weights are DTensor shards. Save the "
                "adapters (att.save on every rank), load them into an unsharded model with "
                "studio.load and merge there"
            )
        modules = dict(self.model.named_modules())
        todo = []
        for r in self._resolved:
            if r.key in self._merged:
                continue
            path = r.placement.target.module
            module = modules[path]
            if r.weight_param is not None:
                names = [r.weight_param]
            elif callable(getattr(r.addin, "merge", None)):
                names = _own_weights(module)
            else:
                continue
            todo.append((r, path, module, names))
        # weight methods first, in their order: a hook's update folded in after them is exact, folded
        # in before them it would pass through them (unmerge undoes merges in the reverse order)
        todo.sort(key=lambda item: item[0].weight_param is None)
        for r, path, module, names in todo:
            problem = getattr(r.addin, "merge_problem", None)
            problem = problem(module) if callable(problem) else None
            if problem:
                raise ValueError(f"cannot merge {r.key} into '{path}': {problem}")
        ties = _shared_parameters(self.model)
        for r, path, module, names in todo:
            for n in _holders(module, names):
                full = f"{path}.{n}" if path else n
                others = [q for q in ties.get(id(_tensor(module, n)), ()) if q != full]
                if others and not untie:
                    raise ValueError(
                        f"cannot merge {r.key} into '{full}': it is the same parameter as "
                        f"{', '.join(repr(o) for o in others)} (tied weights), so merging would change "
                        f"{'that' if len(others) == 1 else 'those'} too. Use merge(untie=True) to give "
                        f"'{path}' its own copy while merged (unmerge() and detach() restore the tie)."
                    )
        done: list[Resolved] = []
        try:
            for r, path, module, names in todo:
                holders = _holders(module, names)  # the parameters (a parametrization's originals)
                for n in holders:
                    param = _tensor(module, n)
                    if untie and len(ties.get(id(param), ())) > 1:
                        self._untied.setdefault(r.key, {})[n] = param
                        _set_parameter(
                            module, n, nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
                        )
                self._merged[r.key] = {n: _tensor(module, n).detach().clone() for n in holders}
                _push_stack(module, list(holders), (id(self), r.key))
                done.append(r)
                with torch.no_grad(), still(module):  # (reading a spectral_norm weight moves no buffer)
                    own = self._weight_actions.get(r.key) if r.weight_param is not None else None
                    read_before = _read_weights(module, names, own)  # where other weight methods stay on
                    stored_before = {n: stored_weight(module, n).detach().clone() for n in read_before}
                    try:
                        if r.weight_param is not None:
                            action = self._weight_actions[r.key]
                            stored = stored_weight(module, r.weight_param)
                            self._positions[r.key] = weight_actions(module, r.weight_param).index(action)
                            merged = action(module, stored)
                            remove_weight_action(module, r.weight_param, action)
                            write_weight(module, r.weight_param, merged)  # a parametrization: checked
                        else:
                            r.addin.merge(module)  # type: ignore[operator]  # add-ins that define merge()
                            point, run = self._run_actions[r.key]
                            self._hooks[point].actions.remove(run)
                            self._refresh(point)
                    except ValueError as exc:
                        if not any(is_computed(module, n) for n in names):
                            raise
                        raise ValueError(f"cannot merge {r.key} into '{path}': {exc}") from exc
                    self._check_merged(r, path, module, read_before, stored_before)
        except BaseException:
            for r in reversed(done):  # all or nothing: the weights and add-ins as before this call
                self._unmerge_one(r, modules)
            raise

    def _check_merged(
        self,
        r: Resolved,
        path: str,
        module: nn.Module,
        read_before: dict[str, torch.Tensor],
        stored_before: dict[str, torch.Tensor],
    ) -> None:
        """A weight that other weight methods still read (another attachment's, stacked) must read the
        same after the merge: folding an update under a method that does not commute with it (e.g.
        TrainableTokens' rows, DoRA's norm) would change the outputs. Raises ValueError."""
        for n, before in read_before.items():
            expected: torch.Tensor | None = before
            if r.weight_param is None:  # a hook's update now sits in the stored weight, under the methods
                additive = getattr(r.addin, "merge_adds", False)  # merge() adds what the hook added
                stored = stored_weight(module, n)
                expected = before + (stored - stored_before[n]) if additive else None
            after = getattr(module, n)
            if expected is None:
                why = ", and this add-in's merge is not a plain addition to the weight,"
            elif not after.is_floating_point() or not after.numel():
                continue
            else:
                tol = 64 * torch.finfo(after.dtype).eps * (1 + float(expected.abs().max()))
                if float((after - expected).abs().max()) <= tol:
                    continue
                why = " and does not commute with this update,"
            labels = ", ".join(getattr(a, "label", "?") for a in weight_actions(module, n))
            full = f"{path}.{n}" if path else n
            raise ValueError(
                f"cannot merge {r.key} into '{full}': its weight is also read through "
                f"{labels}, which stays attached{why} so merging would change the outputs. "
                f"Merge or detach that one first."
            )

    def unmerge(self) -> None:
        """Undo :meth:`merge`: restore the base weights bit for bit (and ties) and switch the add-ins
        back on.

        Raises:
            RuntimeError: A weight it would restore was changed since by another attachment (a merge, a
                PiSSA/KaSA base move); restoring ours would undo theirs.
        """
        self._check_restorable(moves=False)
        modules = dict(self.model.named_modules())
        by_key = {r.key: r for r in self._resolved}
        # reverse merge order: two merges into one weight undo in turn
        for key in reversed(list(self._merged)):
            self._unmerge_one(by_key[key], modules)

    def _check_restorable(self, moves: bool) -> None:
        """Before unmerge (and, with ``moves``, detach) changes anything: every weight it restores from a
        snapshot must not have been changed since by another attachment (a merge, a PiSSA/KaSA base
        move); restoring ours would undo theirs. RuntimeError naming it."""
        modules = dict(self.model.named_modules())
        stacks: dict[tuple[int, str], list[tuple[int, str]]] = {}
        by_key = {r.key: r for r in self._resolved}
        ours = [(by_key[key], key, snapshot) for key, snapshot in reversed(list(self._merged.items()))]
        if moves:
            ours += [(r, "move:" + r.key, self._moved.get(r.key, {})) for r in reversed(self._resolved)]
        for r, tag, snapshot in ours:
            module = modules[r.placement.target.module]
            for n in snapshot:
                stack = stacks.setdefault((id(module), n), list(_MERGE_STACKS.get(module, {}).get(n, [])))
                if stack and stack[-1] != (id(self), tag):
                    path = r.placement.target.module
                    other = stack[-1][1]
                    what = (
                        f"had part moved out by {other[5:]}"
                        if other.startswith("move:")
                        else f"has {other} merged into it"
                    )
                    raise RuntimeError(
                        f"cannot {'detach' if moves else 'unmerge'} {r.key}: "
                        f"'{path + '.' if path else ''}{n}' {what} (another attachment) "
                        f"since; unmerge (or detach) that attachment first"
                    )
                if stack:
                    stack.pop()

    def _unmerge_one(self, r: Resolved, modules: Mapping[str, nn.Module]) -> None:
        snapshot = self._merged.pop(r.key, None)
        if snapshot is None:
            return
        module = modules[r.placement.target.module]
        _pop_stack(module, snapshot, (id(self), r.key))
        with torch.no_grad():
            for n, t in snapshot.items():
                _tensor(module, n).copy_(t)
        for n, original in self._untied.pop(r.key, {}).items():
            _set_parameter(module, n, original)
        if r.weight_param is not None:  # (a merge that failed part-way may not have removed it yet)
            if self._weight_actions[r.key] not in weight_actions(module, r.weight_param):
                add_weight_action(
                    module, r.weight_param, self._weight_actions[r.key], self._positions.pop(r.key, None)
                )
            return
        point, action = self._run_actions[r.key]
        if point in self._hooks and action not in self._hooks[point].actions:
            self._hooks[point].actions.append(action)
            self._refresh(point)

    def _refresh(self, point: tuple[str, str]) -> None:
        """Drop a hook with no actions left (a merged model pays nothing); re-register when needed."""
        hook = self._hooks[point]
        handle = self._handles.get(point)
        if not hook.actions and handle is not None:
            handle.remove()
            del self._handles[point]
        elif hook.actions and handle is None:
            module = dict(self.model.named_modules())[point[0]]
            self._handles[point] = (
                module.register_forward_pre_hook(hook)
                if point[1] == "pre"
                else module.register_forward_hook(hook)
            )

    def _require_attached(self, what: str) -> None:
        if not self.attached:
            raise RuntimeError(f"cannot {what}: this attachment has been detached")

    # -- checkpoints (written by addin_studio.checkpoint, which registers itself: see register_io) --
    def save(self, path: str | Path) -> None:
        """Save add-in (and kept-trainable) weights as safetensors, with the config in the metadata.

        Args:
            path: The ``.safetensors`` file to write; read it back with :func:`load`.
        """
        _io("save")(self, path)

    def export_peft(self, directory: str | Path) -> None:
        """Write ``adapter_model.safetensors`` + ``adapter_config.json`` for Hugging Face PEFT.

        Args:
            directory: The folder to write the two files into.
        """
        _io("export_peft")(self, directory)


# The file formats live above the engine (addin_studio.checkpoint); they plug in here so that the
# engine never imports them (no import cycle) while ``att.save()`` keeps working.
_IO: dict[str, Callable[["Attachment", Any], None]] = {}


def register_io(**writers: Callable[["Attachment", Any], None]) -> None:
    """Register the functions behind :meth:`Attachment.save` and :meth:`Attachment.export_peft`."""
    unknown = set(writers) - {"save", "export_peft"}
    if unknown:
        raise ValueError(f"register_io() takes save= and export_peft=, not {sorted(unknown)}")
    _IO.update(writers)


def _io(name: str) -> Callable[["Attachment", Any], None]:
    if name not in _IO:  # only when the engine was imported directly and the formats never loaded
        raise RuntimeError(
            f"Attachment.{name} needs the checkpoint formats: import addin_studio.checkpoint "
            f"(studio.attach, studio.load and the Trainer load them for you)"
        )
    return _IO[name]


def _is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` (FSDP2) turned the model's parameters into DTensor shards."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _shared_parameters(model: nn.Module) -> dict[int, list[str]]:
    """``id(parameter) -> its name in every module that holds it`` (more than one: a tie). A module
    shared by several parents holds its parameters once: their other names are not ties."""
    names: dict[int, list[str]] = {}
    for path, module in model.named_modules():
        for n, param in module._parameters.items():
            if param is not None:
                names.setdefault(id(param), []).append(f"{path}.{n}" if path else n)
    return names


def _push_stack(module: nn.Module, names: Any, entry: tuple[int, str]) -> None:
    """Put ``entry`` on top of the merge stacks of ``module``'s parameters ``names``."""
    stacks = _MERGE_STACKS.setdefault(module, {})
    for n in names:
        stacks.setdefault(n, []).append(entry)


def _pop_stack(module: nn.Module, names: Any, entry: tuple[int, str]) -> None:
    """Take ``entry`` off the merge stacks of ``module``'s parameters ``names``."""
    stacks = _MERGE_STACKS.get(module, {})
    for n in names:
        if entry in stacks.get(n, []):
            stacks[n].remove(entry)
        if not stacks.get(n, True):
            del stacks[n]


def _own_weights(module: nn.Module) -> list[str]:
    """The names of ``module``'s own weights: its parameters, and the tensors a parametrization (or a
    legacy weight_norm/spectral_norm hook) computes, under the name the layer reads them by."""
    names = [n for n, _ in module.named_parameters(recurse=False)]
    computed = list(getattr(module, "parametrizations", {}) or {})
    computed += [
        n for n in ("weight", "bias") if n not in names and n not in computed and is_computed(module, n)
    ]
    holders = {h for n in computed for h in stored_tensors(module, n)}
    return [n for n in names if n not in holders] + computed


def _holders(module: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The parameters holding the weights ``names`` (:func:`stored_tensors`), by their names in ``module``."""
    return {k: t for n in names for k, t in stored_tensors(module, n).items()}


def _tensor(module: nn.Module, name: str) -> nn.Parameter:
    """``module``'s parameter ``name`` (dotted: a parametrization's ``parametrizations.weight.original``)."""
    owner, _, leaf = name.rpartition(".")
    return cast(nn.Parameter, (module.get_submodule(owner) if owner else module)._parameters[leaf])


def _set_parameter(module: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    (module.get_submodule(owner) if owner else module)._parameters[leaf] = param


def _read_weights(module: nn.Module, names: list[str], own: Any = None) -> dict[str, torch.Tensor]:
    """The weights ``module`` computes with, for those of ``names`` that weight methods other than
    ``own`` adapt."""
    return {
        n: getattr(module, n).detach().clone()
        for n in names
        if any(a is not own for a in weight_actions(module, n))
    }


def _label(p: Placement) -> str:
    return f"({p.addin}.{p.method}) at {p.target}"


def attach(
    model: nn.Module,
    config: Config | str,
    addins: Mapping[str, Callable] | None = None,
    example_input: Any = None,
    *,
    freeze: bool = True,
    graph: ModuleGraph | None = None,
    reuse: Mapping[Placement, nn.Module] | None = None,
    **forward_kwargs: Any,
) -> Attachment:
    """Attach the add-ins a config describes to ``model``.

    Everything is validated first (module paths, add-in names, methods and their signatures, settings,
    ``{in}``-before-``{out}`` order when ``example_input`` is given, trainable patterns); on any error
    the model is untouched. Use the result as a context manager or call :meth:`Attachment.detach` to
    undo everything.

    Args:
        model: The base model the add-ins attach to.
        config: A :class:`Config` or a config string (parsed with :func:`parse`).
        addins: Add-in classes (factories) by the name the config uses, e.g. ``{"Name": Name}``; a name
            here takes precedence over the registered add-ins.
        example_input: An input for one traced forward pass (a tensor, a tuple of positional inputs or
            a dict of keyword inputs); with it the ``{in}``-before-``{out}`` order is checked too.
        freeze: With ``True`` the base model is frozen except the parameters the config keeps
            trainable.
        graph: A :class:`ModuleGraph` traced before, to skip tracing the model again.
        reuse: Maps placements to add-in objects built before (e.g. ``{p: a for _, p, a in
            old.entries}`` of a detached attachment): an equal placement (add-in, method, points,
            settings) takes its object, trained weights and all, instead of a freshly initialised one.
        **forward_kwargs: Keyword inputs for the traced forward pass, besides ``example_input``.

    Returns:
        The :class:`Attachment` that holds the add-ins and undoes them.

    Raises:
        ConfigError: The config does not fit the model (module paths, add-in names, methods and their
            signatures, settings, point order, trainable patterns); the model is untouched.
        TypeError: ``model`` is not an ``nn.Module`` or ``config`` is neither a Config nor a string.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach() expects an nn.Module, got {type(model).__name__}")
    cfg = parse(config) if isinstance(config, str) else config
    if not isinstance(cfg, Config):
        raise TypeError(f"attach() expects a Config or a config string, got {type(config).__name__}")
    if not cfg.placements and not cfg.trainable and not cfg.running_stats:
        raise ConfigError(
            "this config places no add-in and keeps nothing trainable: attaching it "
            "would only freeze the model",
            cfg.text,
            0 if cfg.text is not None else None,
            "write a placement such as '(LoRA.adapt_output): ...->(fc1){inout}->...', or "
            "trainable(head) to train only the head",
        )
    if graph is None:
        graph = trace(model, example_input, **forward_kwargs)
    cfg = canonical_config(cfg, graph)  # a module shared by several parents: under its first name
    resolved, keep = resolve(model, cfg, graph, addins, reuse)
    att = Attachment(model, cfg, graph, resolved, keep, freeze, _norms(model, cfg, keep, graph))
    att._apply()
    if example_input is not None and resolved:
        try:
            _prove(att, example_input, forward_kwargs)
        except BaseException:
            att._undo()
            raise
    return att


def _norms(model: nn.Module, cfg: Config, keep: set[str], graph: ModuleGraph) -> tuple[list[str], list[str]]:
    """The normalization layers whose statistics stay fixed and those whose statistics update; a
    ``running_stats`` pattern that names no such layer is a ConfigError."""
    norms = norm_layers(model, skip=addin_children(model))
    frozen, updating, unmatched = split_norms(norms, keep, cfg.running_stats)
    if unmatched:
        from ..config.errors import did_you_mean
        from ..config.paths import format_path

        bad = unmatched[0]
        close = did_you_mean(bad, list(norms))
        text = cfg.text
        position = None
        if text is not None:  # the pattern inside a running_stats(...) entry, else the keyword
            keyword = text.find("running_stats")
            found = [i for i in (text.find(format_path(bad), keyword), text.find(bad, keyword)) if i >= 0]
            position = min(found) if keyword >= 0 and found else keyword
        layers = ", ".join(format_path(p) for p in list(norms)[:4]) + (", ..." if len(norms) > 4 else "")
        raise ConfigError(
            f"running_stats pattern '{format_path(bad)}' names no normalization layer with "
            f"running statistics in {graph.root_class}"
            + (f" (its layers: {layers})" if norms else " (it has none)"),
            text,
            position if position is not None and position >= 0 else None,
            f"did you mean '{format_path(close[0])}'?"
            if close
            else "running_stats(...) takes BatchNorm-like layers (or modules above them), e.g. "
            "running_stats(layer4) or running_stats(*)",
        )
    return frozen, updating


def _prove(att: Attachment, example_input: Any, forward_kwargs: dict) -> None:
    """Run the attached model once (on ``meta`` where it can); a failure is a ConfigError naming the
    first placement (in config order) whose add-in makes the forward pass fail."""
    from .prove import first_failure, run_meta, run_real
    from .resolve import _Locator, _describe

    try:
        run_meta(att.model, example_input, forward_kwargs)
        return
    except Exception:  # noqa: BLE001 - some models cannot run on meta: try for real
        pass
    finally:
        _clear_caches(att)
    try:
        run_real(att.model, example_input, forward_kwargs)
        return
    except Exception:  # noqa: BLE001
        pass
    finally:
        _clear_caches(att)
    addins = [r.addin for r in att._resolved]
    index, error = first_failure(
        att.model,
        example_input,
        forward_kwargs,
        list(att._hooks.values()),
        addins,
        run_real,
        list(att._forward_actions.values()),
    )
    _clear_caches(att)
    if index is None:
        raise RuntimeError(
            f"the model's forward pass fails on the example input with the add-ins "
            f"switched off: {type(error).__name__}: {error}"
        ) from error
    r = att._resolved[index]
    p = r.placement
    hint = getattr(r.addin, "placement_hint", None)
    hint = hint(att.graph) if callable(hint) else None
    raise _Locator(att.config).error(
        f"{_describe(p)} breaks the forward pass on the example input: {type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else ''}",
        p,
        p.target.module.rsplit(".", 1)[-1],
        hint=hint or "check that the add-in's output has the shape the next module expects",
    ) from error


def _clear_caches(att: Attachment) -> None:
    for addin in att.addins.values():
        if hasattr(addin, "inputs_cache"):
            setattr(addin, "inputs_cache", None)  # nn.Module typing forbids a None attribute
