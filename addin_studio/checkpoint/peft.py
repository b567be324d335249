"""Hugging Face PEFT adapter directories (``adapter_config.json`` + ``adapter_model.safetensors``).

This module reads and writes the directory and handles what every PEFT type shares (the
``base_model.model.`` prefix, ``modules_to_save``); what an add-in's tensors and config fields look like
is the add-in class's own :class:`~addin_studio.addins.interop.PeftMapping` (its ``peft`` attribute).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..addins.interop import PeftEntry, PeftMapping, peft_mapping, peft_mappings
from ..addins.peft_patterns import compile_key, listed_by_peft
from ..config import Config, ConfigError
from ..engine import AddinDict, Attachment
from ..engine.freezing import match_trainable
from ..graph import module_aliases
from . import files
from .attaching import attach_filled
from .collective import full_tensors, one_writer
from .fingerprint import addin_child, base_params
from .peft_bias import base_name, bias_mode, export_biases, is_bias, read_biases
from .validate import check_tensor, expect

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
_SAVED = ".modules_to_save.default."


def _covered() -> str:
    return ", ".join(name for name, _ in sorted(peft_mappings().values())) or "no add-in"


def export_peft(att: Attachment, directory: str | Path) -> None:
    """Alias of ``att.export_peft(directory)``, kept for existing code: call
    :meth:`Attachment.export_peft`."""
    att.export_peft(directory)


def _write_peft(att: Attachment, directory: str | Path) -> None:
    """The writer behind :meth:`Attachment.export_peft` (registered with the engine by this package):
    ``adapter_model.safetensors`` + ``adapter_config.json`` that ``peft.PeftModel`` loads.

    Every add-in must have a PEFT form of one ``peft_type`` (e.g. LoRA: ``addins/lora_peft.py``);
    kept-trainable base weights are exported as PEFT ``modules_to_save`` when they cover whole modules.
    Under torchrun, rank 0 writes; on an FSDP2-sharded model it is a collective (every rank calls it):
    see :mod:`addin_studio.checkpoint.collective`.
    """
    if not att.attached:
        raise RuntimeError("cannot export: this attachment has been detached")
    modules = dict(att.model.named_modules())
    groups: dict[str, tuple[PeftMapping, list[PeftEntry]]] = {}
    for key, p, addin in att.entries:
        own = peft_mapping(addin)
        if own is None:
            raise ValueError(
                f"PEFT export covers {_covered()} only; '{key}' is {type(addin).__name__}."
                f"{p.method}, which has no PEFT form"
            )
        entry = PeftEntry(key, p, addin, modules[p.target.module])
        groups.setdefault(own.peft_type, (own, []))[1].append(entry)
    if not groups:
        raise ValueError("nothing to export: the attachment has no add-ins")
    mapping, entries = _host(groups)
    _check_peft_wraps(att, entries)
    weights, fields = mapping.export(entries)
    for guest, guest_entries in (g for t, g in groups.items() if t != mapping.peft_type):
        joined = guest.export_joined  # type: ignore[attr-defined]
        more, more_fields = joined(guest_entries, mapping.peft_type)
        weights.update(more)
        fields.update(more_fields)
    lead = mapping.lead
    tensors = {_key(lead, name, mapping): t for name, t in weights.items()}
    base = dict(base_params(att.model, addin_child(att.model)))
    _exact_targets(fields, base, modules)
    keep, _ = match_trainable(base, att.config.trainable)
    to_save = []
    for module_path in sorted({n.rpartition(".")[0] for n in keep}):
        own_names = [
            f"{module_path}.{n}" if module_path else n for n, _ in modules[module_path].named_parameters()
        ]
        if module_path and not set(own_names) - keep:
            to_save.append(module_path)
            for name in own_names:
                tensors[lead + name] = base[name]
        elif any(not is_bias(n) for n in set(own_names) & keep):  # biases alone are PEFT's `bias` field
            raise ValueError(
                f"PEFT saves whole modules (modules_to_save); the kept-trainable weights "
                f"cover only part of '{module_path or 'the root'}'"
            )
    for module_path in att.updating_norms:  # moved running statistics ship with their whole module
        if module_path not in to_save:
            if not module_path:
                raise ValueError(
                    "PEFT saves whole modules (modules_to_save), not the root: its running "
                    "statistics cannot be a PEFT adapter"
                )
            to_save.append(module_path)  # its tensors come with the whole state dict just below
    for module_path in to_save:  # PEFT loads a saved module's whole state dict, buffers included
        state = modules[module_path].state_dict(keep_vars=True)
        tensors.update(
            {
                f"{lead}{module_path}.{n}": t
                for n, t in state.items()
                if f"{lead}{module_path}.{n}" not in tensors
            }
        )
    to_save.sort()
    bias, biases = export_biases(keep, {e.placement.target.module for e in entries}, base, to_save)
    tensors.update({lead + name: t for name, t in biases.items()})
    if bias != "none":
        fields["bias"] = bias
    config = {
        "peft_type": mapping.peft_type,
        "task_type": mapping.task_type(att.model),
        "base_model_name_or_path": None,
        "revision": None,
        "inference_mode": True,
        **fields,
        "modules_to_save": to_save or None,
    }
    directory = Path(directory)
    tensors = full_tensors(tensors)  # whole CPU tensors; FSDP2 shards are all-gathered (every rank)
    with one_writer(att.model, directory) as writes:  # rank 0 of a process group writes
        if writes:
            files.write(tensors, directory / PEFT_WEIGHTS, {"format": "pt"})
            (directory / PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))


def _check_peft_wraps(att: Attachment, entries: list[PeftEntry]) -> None:
    """Layers PEFT's LoRA cannot reproduce. Conv subclasses with their own forward (timm's Conv2dSame,
    ScaledStdConv2d: ours adapts their weight). And PEFT applies a LoRA only when its wrapped layer is called
    (``target_parameters`` too): a layer the traced forward never calls — its parent reads its weight (BEiT's,
    EVA-02's, Swin's ``qkv``), so ours adapts it with ``adapt_weight`` — would compute without its update
    under PEFT. ValueError."""
    for e in entries:
        path = e.placement.target.module
        aliases = att.graph[path].aliases if path in att.graph else []
        if aliases:
            raise ValueError(
                f"'{path}' is one {type(e.module).__name__} shared by several parents (also "
                f"reachable as {', '.join(repr(a) for a in aliases)}); PEFT replaces it under "
                f"its first name '{path}' only and the other parents keep calling the bare "
                f"layer, so a PEFT adapter would not compute what this one does (it runs "
                f"wherever the module runs). Keep this adapter in Addin Studio's format "
                f"(att.save / studio.load)"
            )
        base = next((c for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d) if isinstance(e.module, c)), None)
        if base is not None and type(e.module).forward is not base.forward:
            raise ValueError(
                f"'{path}' is a {type(e.module).__name__}, a {base.__name__} with a forward of "
                "its own (e.g. dynamic padding or standardized weights); PEFT's LoRA wraps it "
                f"as a plain {base.__name__}, so a PEFT adapter would not compute what this one "
                f"does. Keep this adapter in Addin Studio's format (att.save / studio.load)"
            )
        if not att.graph.traced:
            continue
        if (
            e.placement.method == "adapt_weight"
            and path in att.graph
            and att.graph[path].order is None
            and not isinstance(e.module, nn.MultiheadAttention)
            and not path.endswith("out_proj")
        ):
            raise ValueError(
                f"'{path}' is never called as a module (its parent reads its weight), so it is "
                f"adapted with adapt_weight; PEFT applies a LoRA only when its layer is called, "
                f"so a PEFT adapter would compute without this update. Keep this adapter in "
                f"Addin Studio's format (att.save / studio.load)"
            )


def _exact_targets(
    fields: dict[str, Any], base: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module]
) -> None:
    """PEFT reads a list ``target_modules`` / ``target_parameters`` as name suffixes (``["fc"]`` adapts
    ``sub.fc`` too). A module list that reaches other base modules becomes a regex PEFT matches against
    whole names; a parameter list has no such form, so that is a ValueError."""
    addins = {n for n, m in modules.items() if isinstance(m, AddinDict) and "." not in n}
    names = [n for n in modules if n and n.split(".")[0] not in addins]

    def reaches(targets: list[str], candidates: Iterable[str]) -> str | None:
        own = set(targets)
        return next((c for c in candidates if c not in own and listed_by_peft(targets, c)), None)

    targets = fields.get("target_modules")
    if isinstance(targets, list) and reaches(targets, names):
        fields["target_modules"] = "|".join(re.escape(t) for t in targets)
    params = fields.get("target_parameters")
    other = reaches(params, base) if isinstance(params, list) else None
    if other:
        raise ValueError(
            f"PEFT's target_parameters {params} would adapt '{other}' too (it matches name "
            f"suffixes); this LoRA on a named parameter cannot be a PEFT adapter"
        )


def _host(groups: dict[str, tuple[PeftMapping, list[PeftEntry]]]) -> tuple[PeftMapping, list[PeftEntry]]:
    """The mapping whose adapter holds every entry: the only one, or the one every other mapping
    ``joins`` (LoRA with trainable tokens: LoraConfig's ``trainable_token_indices``)."""
    if len(groups) == 1:
        return next(iter(groups.values()))
    hosts = [t for t in groups if all(t in getattr(m, "joins", ()) for o, (m, _) in groups.items() if o != t)]
    if len(hosts) != 1:
        (first, _), (other, (_, entries)) = list(groups.items())[:2]
        raise ValueError(
            f"a PEFT adapter holds one peft_type; '{entries[0].key}' is {other}, the others are {first}"
        )
    return groups[hosts[0]]


def from_peft(
    model: nn.Module,
    directory: str | Path,
    example_input: Any = None,
    *,
    modules_to_save: bool | Iterable[str] = False,
    base_biases: bool = False,
    allow_nonfinite: bool = False,
    **attach_kwargs: Any,
) -> Attachment:
    """Attach the adapter a PEFT directory holds to ``model``.

    The directory holds ``adapter_config.json`` + ``adapter_model.safetensors``. The ``peft_type``
    picks the add-in whose PEFT form reads it (LORA: ``addins/lora_peft.py``, with its variants).
    Tensors must be floating point and finite. The model is untouched on any error.

    Args:
        model: The base model the adapter was trained on.
        directory: The PEFT adapter folder.
        example_input: An input for one traced forward pass, as for :func:`attach`.
        modules_to_save: PEFT ``modules_to_save`` replace base weights, so they load only when asked:
            ``True`` loads those the config lists, a list of module names loads exactly those (each
            must be listed in the config); the default refuses an adapter that has any. Loaded ones
            stay trainable.
        base_biases: The trained base biases of a ``bias="all"`` / ``"lora_only"`` adapter
            (``checkpoint/peft_bias.py``) replace base weights too: they load (and stay trainable)
            with ``True``; the default refuses such an adapter, naming a bias.
        allow_nonfinite: With ``True`` tensors may hold NaN or infinite values.
        **attach_kwargs: Further keyword arguments for :func:`attach` (e.g. ``freeze``).

    Returns:
        The :class:`Attachment` (merge, save, detach as usual).

    Raises:
        FileNotFoundError: The directory has no ``adapter_config.json``.
        ValueError: A malformed config field (naming the file and the field), an unsupported
            ``peft_type``, or an adapter the options above refuse.
    """
    directory = Path(directory)
    config_path = directory / PEFT_CONFIG
    source = str(config_path)
    if not config_path.is_file():
        named = (
            sorted(p.parent.name for p in directory.glob(f"*/{PEFT_CONFIG}")) if directory.is_dir() else []
        )
        hint = f"; PEFT saves a named adapter in a folder of its name: {', '.join(named)}" if named else ""
        raise FileNotFoundError(f"no {PEFT_CONFIG} in {directory}{hint}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
    check_peft_config(config, source)
    found = peft_mappings().get(config.get("peft_type"))
    if found is None:
        raise ValueError(
            f"only {_covered()} adapters can be imported; {config_path} has peft_type "
            f"{config.get('peft_type')!r}"
        )
    addin_name, mapping = found
    listed = list(config.get("modules_to_save") or [])
    allowed = _allowed_saves(modules_to_save, listed, source)
    weights_path = directory / PEFT_WEIGHTS
    if not weights_path.is_file() and (directory / "adapter_model.bin").is_file():
        raise ValueError(
            f"{directory} holds adapter_model.bin (a pickle), not {PEFT_WEIGHTS}; from_peft "
            f"reads safetensors only: save the adapter again with PEFT's save_pretrained("
            f"safe_serialization=True)"
        )
    bias = bias_mode(config, source)
    tensors, _ = files.read(weights_path)
    claimed: dict[str, torch.Tensor] = {}
    saved: dict[str, torch.Tensor] = {}
    twins: list[tuple[str, str, torch.Tensor]] = []  # a second tensor for a saved name
    params = dict(model.named_parameters())
    every = dict(model.named_parameters(remove_duplicate=False))  # tied weights under each of their names
    biases: dict[str, torch.Tensor] = {}
    lead = mapping.lead
    for key, t in tensors.items():
        if key in mapping.bare:
            claimed[key] = t
            continue
        if not key.startswith(lead):
            raise ValueError(f"{weights_path}: unexpected key '{key}'")
        name = key[len(lead) :]
        if mapping.claims(name):
            claimed[name] = t
            continue
        if (
            bias != "none"
            and _SAVED not in name
            and is_bias(name)
            and _listed_module(base_name(name), listed) is None
        ):
            biases[name] = t  # a trained base bias (bias="all" / "lora_only")
            continue
        name = name.replace(_SAVED, ".")
        module = _listed_module(name, listed)
        if module is None and _same_base(base_name(name), t, model, every, key, str(weights_path)):
            continue  # PEFT's save_embedding_layers: a copy of the base weight, loading it changes nothing
        if module is None:
            raise ValueError(
                f"{weights_path}: tensor '{key}' is neither {mapping.peft_type} weights nor "
                f"in a module the config's modules_to_save lists; refusing to load it"
            )
        if module not in allowed:
            raise ValueError(
                f"{weights_path}: the adapter overwrites base module '{module}' "
                f"(modules_to_save); pass modules_to_save=True (or a list with "
                f"{module!r}) to from_peft to allow that"
            )
        # bias="all" also saves the wrapper's inner biases: the untouched original (PEFT never runs it
        # while the adapter is active) and the trained copy again
        if ".original_module." in name:
            continue
        name = name.replace(".modules_to_save.", ".")
        if name in saved:
            twins.append((name, key, t))  # checked with the others, then compared
            continue
        saved[name] = t
    for name, t in claimed.items():
        if not t.is_floating_point():
            raise ValueError(
                f"{weights_path}: tensor '{_key(lead, name, mapping)}' has dtype {t.dtype}; a "
                f"floating-point tensor is needed"
            )
        if not allow_nonfinite and t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{weights_path}: tensor '{_key(lead, name, mapping)}' holds non-finite values")
    imports = mapping.read(config, claimed, model, addin_name, str(directory))
    adapted = {i.placement.target.module for i in imports if i.placement.addin == addin_name}
    trained_biases = read_biases(biases, bias, adapted, params, str(weights_path), lead, allow_nonfinite)
    if trained_biases and base_biases is not True:
        raise ValueError(
            f"{weights_path}: the adapter was trained with bias={bias!r} and holds "
            f"{len(trained_biases)} trained base bias(es) (e.g. '{sorted(trained_biases)[0]}') "
            f"that replace the model's own; pass base_biases=True to from_peft to load them"
        )
    saved.update(trained_biases)
    stats = _saved_statistics(saved, model, str(weights_path), lead, allow_nonfinite)
    for name, t in saved.items():
        if name not in params and name in every:
            tied = next(n for n, p in params.items() if p is every[name])
            raise ValueError(
                f"{weights_path}: the adapter saves '{name}' (modules_to_save), which this "
                f"{type(model).__name__} ties to '{tied}'; PEFT trains an untied copy, which "
                f"from_peft cannot load without changing '{tied}' too"
            )
        if name not in params:
            raise ValueError(
                f"the adapter saves '{name}' (modules_to_save), which this "
                f"{type(model).__name__} does not have"
            )
        check_tensor(t, params[name], lead + name, str(weights_path), allow_nonfinite)
    for name, key, t in twins:
        check_tensor(t, params[name], key, str(weights_path), allow_nonfinite)
        if not torch.equal(t.to(saved[name].dtype), saved[name]):
            raise ValueError(
                f"{weights_path}: the adapter saves '{name}' (modules_to_save) twice, with "
                f"different values ('{key}')"
            )
    shared = module_aliases(model)
    for i in imports:
        path = i.placement.target.module
        others = [a for a, c in shared.items() if c == path]
        if others:
            raise ValueError(
                f"{config_path}: the adapter targets '{path}', one module shared by several "
                f"parents (also reachable as {', '.join(repr(a) for a in others)}); PEFT adapts "
                f"it under that name only (the other parents call the bare layer), while an "
                f"add-in here runs wherever the module runs, so the attached model would not "
                f"compute what PEFT computes"
            )
    cfg = Config(
        [i.placement for i in imports],
        sorted(saved),
        running_stats=sorted({n.rpartition(".")[0] for n in stats}),
    )

    def fill(att: Attachment) -> None:
        for (_, p, addin), item in zip(att.entries, imports):
            own = addin.state_dict()
            for part, t in item.state.items():
                want = tuple(own[part].shape) if part in own else None
                if tuple(t.shape) != want:
                    where = p.target.module + (f".{p.settings['param']}" if "param" in p.settings else "")
                    raise ValueError(
                        f"the adapter's {part} for '{where}' has shape "
                        f"{tuple(t.shape)}; this model's layer needs {want}"
                    )
        for (_, p, addin), item in zip(att.entries, imports):
            addin.load_state_dict(item.state, strict=False)
        own_stats = att.statistics()
        with torch.no_grad():
            for name, t in stats.items():
                own_stats[name].copy_(t)

    try:
        return attach_filled(model, cfg, fill, params, saved, example_input=example_input, **attach_kwargs)
    except ConfigError as exc:  # a setting the adapter's config gives that the add-in refuses
        raise ConfigError(f"{config_path}: {exc.message}", hint=exc.hint) from None


def _saved_statistics(
    saved: dict[str, torch.Tensor], model: nn.Module, source: str, lead: str, allow_nonfinite: bool
) -> dict[str, torch.Tensor]:
    """Take the buffers out of ``saved`` (PEFT's modules_to_save hold a module's whole state dict): the
    running statistics of normalization layers are returned (they load as ``running_stats(...)``); any
    other buffer must equal the model's own (PEFT saved an unchanged copy), else ValueError."""
    from ..engine.norm_stats import STAT_BUFFERS, has_running_stats

    modules = dict(model.named_modules())
    buffers = dict(model.named_buffers())
    stats: dict[str, torch.Tensor] = {}
    for name in [n for n in saved if n in buffers]:
        t = saved.pop(name)
        check_tensor(t, buffers[name], lead + name, source, allow_nonfinite)
        owner, _, leaf = name.rpartition(".")
        if leaf in STAT_BUFFERS and has_running_stats(modules[owner]):
            stats[name] = t
        elif not torch.equal(t.to(buffers[name].dtype), buffers[name]):
            raise ValueError(
                f"{source}: the adapter saves buffer '{name}' (modules_to_save) with other "
                "values than the model's; from_peft loads running statistics of normalization "
                f"layers only"
            )
    return stats


def _listed_module(name: str, listed: list[str]) -> str | None:
    """The ``modules_to_save`` entry that covers tensor ``name``: PEFT wraps every module whose path ends
    with an entry (``embed_tokens`` is ``model.embed_tokens``), so an entry is a suffix, not a path."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        path = ".".join(parts[:i])
        found = next((m for m in listed if path.endswith(m)), None)
        if found is not None:
            return found
    return None


def _same_base(
    name: str, t: torch.Tensor, model: nn.Module, params: dict[str, nn.Parameter], key: str, source: str
) -> bool:
    """Whether file tensor ``key`` (model-relative ``name``, ``.base_layer.`` dropped) is a copy of the
    input or output embedding's parameter ``name``, as PEFT's ``save_embedding_layers`` writes it for a
    targeted ``embed_tokens`` / ``lm_head``. False for other names; ValueError when loading it would
    change the base weight."""
    p = params.get(name)
    getters = ("get_input_embeddings", "get_output_embeddings")
    layers = [getattr(model, get, lambda: None)() for get in getters]
    owner = name.rpartition(".")[0]
    if p is None or not any(
        owner and layer is model.get_submodule(owner) for layer in layers if layer is not None
    ):
        return False
    if (
        tuple(t.shape) == tuple(p.shape)
        and t.is_floating_point() == p.is_floating_point()
        and torch.equal(t.to(device=p.device, dtype=p.dtype), p.detach())
    ):
        return True
    raise ValueError(
        f"{source}: tensor '{key}' replaces the base weight '{name}' (shape {tuple(t.shape)}, "
        f"the model's {tuple(p.shape)}) with other values, as PEFT's save_embedding_layers does "
        f"after resizing or training an embedding; from_peft replaces base weights only for the "
        f"config's modules_to_save, so it refuses this adapter"
    )


def _key(lead: str, name: str, mapping: PeftMapping) -> str:
    """A model-relative tensor name as the mapping's PEFT file writes it."""
    return name if name in mapping.bare else lead + name


def _allowed_saves(option: bool | Iterable[str], listed: list[str], source: str) -> set[str]:
    if option is True:
        return set(listed)
    if option is False or option is None:
        return set()
    if isinstance(option, str):
        option = [option]
    names = list(option)
    unknown = [n for n in names if n not in listed]
    if unknown:
        raise ValueError(
            f"modules_to_save={names!r}: {source} does not list {unknown[0]!r} in its "
            f"modules_to_save ({listed})"
        )
    return set(names)


_FIELDS = {  # adapter_config.json fields we read, and their JSON types (None is always accepted)
    "peft_type": "str",
    "r": "int",
    "lora_alpha": "number",
    "lora_dropout": "number",
    "bias": "str",
    "use_dora": "bool",
    "use_rslora": "bool",
    "lora_bias": "bool",
    "fan_in_fan_out": "bool",
    "modules_to_save": "list[str]",
    "rank_pattern": "object",
    "alpha_pattern": "object",
    "target_modules": "str or list[str]",
    "exclude_modules": "str or list[str]",
    "target_parameters": "list[str]",
}


def check_peft_config(config: Any, source: str) -> None:
    """Every field we read has its JSON type; ValueError naming the file and the field otherwise."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: the config must be a JSON object, got {type(config).__name__}")
    for field, kind in _FIELDS.items():
        if config.get(field) is not None:
            expect(config[field], kind, source, field)
    if "peft_type" not in config:
        raise ValueError(f"{source}: the config has no field 'peft_type'")
    dropout = config.get("lora_dropout")
    if dropout is not None and not 0 <= dropout < 1:
        raise ValueError(f"{source}: field 'lora_dropout' must be in [0, 1), got {dropout!r}")
    for field in ("rank_pattern", "alpha_pattern"):
        for key, value in (config.get(field) or {}).items():
            compile_key(key, source, field)
            kind = "int" if field == "rank_pattern" else "number"
            expect(value, kind, source, f"{field}[{key[:40]!r}]")
