"""Adapter-only checkpoints (safetensors): save an Attachment, re-attach it from the file alone.

A checkpoint holds the add-ins' tensors (``addins.<key>.<name>``), the kept-trainable base
parameters (``base.<name>``) and the running statistics of the normalization layers whose statistics
updated in training (``stats.<layer>.<buffer>``: ``running_stats(...)`` or trained norm parameters;
every other BatchNorm of a frozen base keeps its statistics, so the file reproduces the trained
model); its metadata holds the config string, each placement's settings and a
fingerprint of the model (root class, every base parameter's name and shape) so that :func:`load` can
re-attach from the file alone and refuse a model that does not match.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..config import ConfigError, Placement, parse
from ..engine import Attachment
from ..engine.freezing import match_trainable
from . import files
from .collective import full_tensors, one_writer
from .attaching import attach_filled
from .fingerprint import addin_child, base_params, check_fingerprint, check_touched, fingerprint
from .validate import check_fingerprint_fields, check_tensor, expect, json_field

FORMAT = "addin_studio.adapters/1"


def _placement_json(p: Placement) -> dict[str, Any]:
    return {
        "addin": p.addin,
        "method": p.method,
        "source": str(p.source),
        "target": str(p.target),
        "settings": dict(p.settings),
    }


def save_attachment(att: Attachment, path: str | Path) -> None:
    """Alias of ``att.save(path)``, kept for existing code: call :meth:`Attachment.save`."""
    att.save(path)


def _write_attachment(att: Attachment, path: str | Path) -> None:
    """The writer behind :meth:`Attachment.save` (registered with the engine by this package): the
    add-in weights and kept-trainable base weights of ``att`` to ``path`` (safetensors).

    Under torchrun, rank 0 writes; on an FSDP2-sharded model it is a collective (every rank calls it,
    the shards are gathered, the file exists on return): see :mod:`addin_studio.checkpoint.collective`."""
    if not att.attached:
        raise RuntimeError("cannot save: this attachment has been detached")
    was_merged, was_untied = att.merged, att.untied
    if was_merged:  # save the base weights as they are without the folded-in updates
        att.unmerge()
    try:
        child = addin_child(att.model)
        tensors, shared = _addin_tensors(att)
        base = dict(base_params(att.model, child))
        keep, _ = match_trainable(base, att.config.trainable)
        for name in sorted(keep):
            tensors[f"base.{name}"] = base[name]
        for name, t in sorted(att.statistics().items()):
            tensors[f"stats.{name}"] = t
        on_meta = next((name for name, t in tensors.items() if t.is_meta), None)
        if on_meta is not None:
            raise ValueError(
                f"cannot save {path}: tensor '{on_meta}' is on the meta device (no values); "
                f"call studio.materialize first"
            )
        meta = {
            "format": FORMAT,
            "config": str(att.config),
            "placements": json.dumps([_placement_json(p) for _, p, _ in att.entries]),
            "keys": json.dumps([key for key, _, _ in att.entries]),
            "fingerprint": json.dumps(fingerprint(att.model, child)),
        }
        if shared:
            meta["shared"] = json.dumps(shared)
        tensors = full_tensors(tensors)  # whole CPU tensors; FSDP2 shards are all-gathered (every rank)
        with one_writer(att.model, path) as writes:  # rank 0 of a process group writes
            if writes:
                files.write(tensors, Path(path), meta)
    finally:
        if was_merged:
            att.merge(untie=was_untied)


def _addin_tensors(att: Attachment) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The add-ins' tensors by file key, each tensor once: a parameter several add-ins share (FacT's
    factors) is written under its first key; ``shared`` maps each later key to that one."""
    tensors: dict[str, torch.Tensor] = {}
    shared: dict[str, str] = {}
    first: dict[int, str] = {}
    for key, _, addin in att.entries:
        for name, t in addin.state_dict(keep_vars=True).items():
            full = f"addins.{key}.{name}"
            if id(t) in first:
                shared[full] = first[id(t)]
            else:
                first[id(t)] = full
                tensors[full] = t
    return tensors, shared


def _shared_field(
    meta: Mapping[str, str], tensors: Mapping[str, torch.Tensor], source: str
) -> dict[str, str]:
    """The file's ``shared`` field (key -> the key whose tensor it shares), checked."""
    if "shared" not in meta:
        return {}
    shared = expect(json_field(meta, "shared", source), "object", source, "shared")
    for alias, owner in shared.items():
        if (
            not isinstance(owner, str)
            or not owner.startswith("addins.")
            or owner not in tensors
            or alias in tensors
        ):
            raise ValueError(
                f"{source}: field 'shared' maps '{alias}' to {owner!r}; each entry must name "
                f"a key the file does not hold and a tensor it holds"
            )
    return shared


def load(
    model: nn.Module,
    path: str | Path,
    addins: Mapping[str, Callable] | None = None,
    example_input: Any = None,
    *,
    strict: bool = True,
    allow_nonfinite: bool = False,
    **attach_kwargs: Any,
) -> Attachment:
    """Re-attach the add-ins saved in ``path`` to ``model`` and load their weights.

    The file alone is enough for built-in add-ins. A file loads only what it owns: the tensors of the
    add-ins its config places and the base parameters its config keeps trainable, and the running
    statistics of the normalization layers whose statistics its config updates (restored at detach) —
    any other tensor is refused by name; tensors must be floating point and finite. On any error the
    model is left untouched.

    Args:
        model: The model to attach to; it must match the one saved (same root class, same parameter
            names and shapes).
        path: The ``.safetensors`` file written by :meth:`Attachment.save`.
        addins: Your own add-in classes by name (``{"Name": Name}``); built-in ones need nothing.
        example_input: An input for one traced forward pass, as for :func:`attach`.
        strict: With ``False`` only the modules the add-ins and kept-trainable weights touch must match
            the saved model.
        allow_nonfinite: With ``True`` tensors may hold NaN or infinite values.
        **attach_kwargs: Further keyword arguments for :func:`attach` (e.g. ``freeze``).

    Returns:
        The :class:`Attachment`, with the saved weights loaded.

    Raises:
        ValueError: The file is damaged or foreign (naming the file and the field), holds a tensor it
            does not own, or the model does not match it.
        ConfigError: The config string in the file is bad or does not fit the model.
    """
    path = Path(path)
    source = str(path)
    tensors, meta = files.read(path)
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an Addin Studio adapter checkpoint (metadata format "
            f"{meta.get('format')!r}, expected {FORMAT!r})"
        )
    if "config" not in meta:
        raise ValueError(f"{source}: the metadata has no field 'config'")
    try:
        cfg = parse(meta["config"])
    except ConfigError as exc:
        raise _in_file(exc, source) from None
    keys = expect(json_field(meta, "keys", source), "list[str]", source, "keys")
    expected = json_field(meta, "fingerprint", source)
    check_fingerprint_fields(expected, source)
    if strict:
        check_fingerprint(model, expected, source)
    else:
        check_touched(model, cfg, expected, source)
    base = dict(base_params(model))
    keep, _ = match_trainable(base, cfg.trainable)
    base_tensors: dict[str, torch.Tensor] = {}
    stats_tensors: dict[str, torch.Tensor] = {}
    addin_tensors: dict[str, dict[str, torch.Tensor]] = {k: {} for k in keys}
    shared = _shared_field(meta, tensors, source)
    for name, t in [*tensors.items(), *((a, tensors[o]) for a, o in shared.items())]:
        head, _, rest = name.partition(".")
        if head == "base" and rest in keep:
            base_tensors[rest] = t
            continue
        if head == "stats":
            stats_tensors[rest] = t  # checked against the layers whose statistics the config updates
            continue
        key, _, part = rest.partition(".")
        if head != "addins" or key not in addin_tensors or not part:
            owner = (
                "a base parameter its config does not keep trainable"
                if head == "base"
                else "no add-in of its config"
            )
            raise ValueError(
                f"{source}: tensor '{name}' belongs to {owner}; a checkpoint loads only its "
                f"add-ins' tensors and the base parameters in its trainable(...)"
            )
        addin_tensors[key][part] = t
    for name, t in base_tensors.items():
        check_tensor(t, base[name], f"base.{name}", source, allow_nonfinite)
    on_meta = (
        "the model is on the meta device (no weights yet), where loading copies nothing: call "
        "studio.materialize first, then studio.load"
    )
    if any(base[name].is_meta for name in base_tensors):
        raise ValueError(f"{source}: {on_meta}")

    def fill(att: Attachment) -> None:
        got = [key for key, _, _ in att.entries]
        if got != keys:
            raise ValueError(f"{source}: the add-ins attached as {got}, the field 'keys' holds {keys}")
        if any(t.is_meta for _, _, addin in att.entries for t in addin.state_dict().values()):
            raise ValueError(f"{source}: {on_meta}")
        for key, _, addin in att.entries:
            state, own = addin_tensors[key], addin.state_dict()
            missing = sorted(set(own) - set(state))
            unexpected = sorted(set(state) - set(own))
            if missing or unexpected:
                raise ValueError(
                    f"{source}: add-in '{key}' expects tensors {sorted(own)}, the file has {sorted(state)}"
                )
            for name, t in state.items():
                check_tensor(t, own[name], f"addins.{key}.{name}", source, allow_nonfinite)
        # the add-ins the config builds must share exactly what the file says they share: a tensor
        # the file holds twice (no 'shared' entry) would load one value over the other
        now = {
            f"addins.{key}.{n}": t
            for key, _, addin in att.entries
            for n, t in addin.state_dict(keep_vars=True).items()
        }
        for alias, owner in shared.items():
            if now[alias] is not now[owner]:
                raise ValueError(
                    f"{source}: field 'shared' says '{alias}' is '{owner}', but the "
                    f"add-ins attached from its config do not share them"
                )
        first: dict[int, str] = {}
        for name, t in now.items():
            if id(t) in first and shared.get(name, name) != shared.get(first[id(t)], first[id(t)]):
                raise ValueError(
                    f"{source}: tensor '{name}' is shared with '{first[id(t)]}' by the add-ins "
                    f"its config attaches, but field 'shared' does not map it to that key "
                    f"(the file holds it twice)"
                )
            first.setdefault(id(t), name)
        own_stats = att.statistics()
        for name, t in stats_tensors.items():
            if name not in own_stats:
                raise ValueError(
                    f"{source}: tensor 'stats.{name}' is the running statistics of a layer "
                    f"whose statistics its config keeps fixed (not in running_stats(...) and "
                    f"no trained parameter); a checkpoint loads only what its config owns"
                )
            check_tensor(t, own_stats[name], f"stats.{name}", source, allow_nonfinite)
        missing_stats = sorted(set(own_stats) - set(stats_tensors))
        if stats_tensors and missing_stats:
            raise ValueError(
                f"{source}: the file holds running statistics but not "
                f"'stats.{missing_stats[0]}', which its config updates"
            )
        if missing_stats:  # a file written before statistics were saved: the model's own stay
            layers = ", ".join(sorted({n.rpartition(".")[0] for n in missing_stats}))
            warnings.warn(
                f"{source} holds no running statistics for {layers} "
                f"(a file from an older Addin Studio): those layers keep this model's statistics, "
                f"so outputs may differ from the trained model's",
                stacklevel=3,
            )
        for key, _, addin in att.entries:  # everything is checked: now load
            addin.load_state_dict(addin_tensors[key], strict=True)
        with torch.no_grad():
            for name, t in stats_tensors.items():
                own_stats[name].copy_(t)

    try:
        return attach_filled(
            model, cfg, fill, base, base_tensors, addins=addins, example_input=example_input, **attach_kwargs
        )
    except ConfigError as exc:
        raise _in_file(exc, source) from None


def _in_file(exc: ConfigError, source: str) -> ConfigError:
    """The same ConfigError (a ValueError), saying that the string is the file's metadata 'config'."""
    return ConfigError(f"{source}: metadata field 'config': {exc.message}", exc.text, exc.position, exc.hint)
