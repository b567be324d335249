"""Adapter-only checkpoints (safetensors) and Hugging Face PEFT export/import. No pickle anywhere.

A checkpoint holds the add-ins' tensors (``addins.<key>.<name>``) and the kept-trainable base
parameters (``base.<name>``); its metadata holds the config string, each placement's settings and a
fingerprint of the model (root class, every base parameter's name and shape) so that :func:`load` can
re-attach from the file alone and refuse a model that does not match.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .config import Config, Placement, Point, parse
from .engine import Attachment, attach
from .engine.freezing import match_trainable

FORMAT = "addin_studio.adapters/1"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


# -- helpers ----------------------------------------------------------------------------------------
def _base_params(model: nn.Module, skip: str | None = None) -> list[tuple[str, nn.Parameter]]:
    """Named base parameters, without the add-ins' (registered under ``skip``)."""
    prefix = f"{skip}." if skip else None
    return [(n, p) for n, p in model.named_parameters() if not (prefix and n.startswith(prefix))]


def _root_class(model: nn.Module) -> str:
    """The model's class name; FSDP2's ``fully_shard`` subclasses it as ``FSDP<Name>``, which is the same model."""
    cls = type(model)
    if any(b.__name__ == "FSDPModule" for b in cls.__bases__):
        cls = next(b for b in cls.__bases__ if b.__name__ != "FSDPModule")
    return cls.__name__


def _fingerprint(model: nn.Module, skip: str | None = None) -> dict[str, Any]:
    return {"root": _root_class(model),
            "params": [[n, list(p.shape)] for n, p in _base_params(model, skip)]}


def _check_fingerprint(model: nn.Module, expected: Mapping[str, Any], source: str) -> None:
    """Raise ValueError naming the first module/shape where ``model`` differs from the checkpoint's."""
    if not isinstance(expected, Mapping) or "params" not in expected:
        raise ValueError(f"{source}: the checkpoint has no model fingerprint")
    root = _root_class(model)
    if expected.get("root") != root:
        raise ValueError(f"{source} was saved for a {expected.get('root')}, not a {root}")
    have = {n: list(p.shape) for n, p in _base_params(model, _addin_child(model))}
    want = {n: list(s) for n, s in expected["params"]}
    for name, shape in want.items():
        if name not in have:
            raise ValueError(f"{source} does not fit this {root}: it has no parameter '{name}' "
                             f"(module '{name.rpartition('.')[0]}'), which the saved model had")
        if have[name] != shape:
            raise ValueError(f"{source} does not fit this {root}: parameter '{name}' has shape "
                             f"{tuple(have[name])} here but {tuple(shape)} in the checkpoint")
    extra = [n for n in have if n not in want]
    if extra:
        raise ValueError(f"{source} does not fit this {root}: parameter '{extra[0]}' is not in the "
                         f"model the checkpoint was saved from")


def _addin_child(model: nn.Module) -> str | None:
    from .engine import AddinDict

    for name, child in model.named_children():
        if isinstance(child, AddinDict):
            return name
    return None


def _placement_json(p: Placement) -> dict[str, Any]:
    return {"addin": p.addin, "method": p.method, "source": str(p.source), "target": str(p.target),
            "settings": dict(p.settings)}


def _tensor(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file (corrupted or truncated?): "
                         f"{exc}") from None
    return tensors, meta


# -- save / load ------------------------------------------------------------------------------------
def save_attachment(att: Attachment, path: str | Path) -> None:
    """Write the add-in weights and kept-trainable base weights of ``att`` to ``path`` (safetensors)."""
    from safetensors.torch import save_file

    if not att.attached:
        raise RuntimeError("cannot save: this attachment has been detached")
    was_merged = att.merged
    if was_merged:  # save the base weights as they are without the folded-in updates
        att.unmerge()
    try:
        child = _addin_child(att.model)
        tensors: dict[str, torch.Tensor] = {}
        for key, _, addin in att.entries:
            for name, t in addin.state_dict().items():
                tensors[f"addins.{key}.{name}"] = _tensor(t)
        base = dict(_base_params(att.model, child))
        keep, _ = match_trainable(base, att.config.trainable)
        for name in sorted(keep):
            tensors[f"base.{name}"] = _tensor(base[name])
        meta = {
            "format": FORMAT,
            "config": str(att.config),
            "placements": json.dumps([_placement_json(p) for _, p, _ in att.entries]),
            "keys": json.dumps([key for key, _, _ in att.entries]),
            "fingerprint": json.dumps(_fingerprint(att.model, child)),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
    finally:
        if was_merged:
            att.merge()


def load(model: nn.Module, path: str | Path, addins: Mapping[str, Callable] | None = None,
         example_input: Any = None, *, strict: bool = True, **attach_kwargs: Any) -> Attachment:
    """Re-attach the add-ins saved in ``path`` to ``model`` and load their weights.

    The file alone is enough for built-in add-ins; pass ``addins=`` for your own classes. The model
    must match the one saved (same root class, same parameter names and shapes; ``strict=False``
    checks only the modules the add-ins and kept-trainable weights touch). On any error the model is
    left untouched: ValueError for a corrupted file or another model, ConfigError for a bad config.
    """
    path = Path(path)
    tensors, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an Addin Studio adapter checkpoint (metadata format "
                         f"{meta.get('format')!r}, expected {FORMAT!r})")
    try:
        cfg = parse(meta["config"])
        keys = json.loads(meta["keys"])
        fingerprint = json.loads(meta["fingerprint"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: damaged metadata ({exc})") from None
    if strict:
        _check_fingerprint(model, fingerprint, str(path))
    else:
        _check_touched(model, cfg, fingerprint, str(path))
    base = dict(_base_params(model, _addin_child(model)))
    base_tensors = {k[5:]: v for k, v in tensors.items() if k.startswith("base.")}
    for name, t in base_tensors.items():
        if name not in base:
            raise ValueError(f"{path}: kept-trainable weight '{name}' has no parameter in this model")
        if tuple(base[name].shape) != tuple(t.shape):
            raise ValueError(f"{path}: kept-trainable weight '{name}' has shape {tuple(t.shape)}, the "
                             f"model's is {tuple(base[name].shape)}")
    att = attach(model, cfg, addins=addins, example_input=example_input, **attach_kwargs)
    try:
        got = [key for key, _, _ in att.entries]
        if got != keys:
            raise ValueError(f"{path}: the add-ins attached as {got}, the checkpoint holds {keys}")
        for key, _, addin in att.entries:
            prefix = f"addins.{key}."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            own = addin.state_dict()
            missing = sorted(set(own) - set(state))
            unexpected = sorted(set(state) - set(own))
            if missing or unexpected:
                raise ValueError(f"{path}: add-in '{key}' expects tensors {sorted(own)}, the file has "
                                 f"{sorted(state)}")
            for name, t in state.items():
                if tuple(own[name].shape) != tuple(t.shape):
                    raise ValueError(f"{path}: '{prefix}{name}' has shape {tuple(t.shape)} but the "
                                     f"add-in built for this model expects {tuple(own[name].shape)}")
            addin.load_state_dict(state, strict=True)
        with torch.no_grad():
            for name, t in base_tensors.items():
                base[name].copy_(t)
    except BaseException:
        att.detach()
        raise
    return att


def _check_touched(model: nn.Module, cfg: Config, fingerprint: Mapping[str, Any], source: str) -> None:
    """The non-strict check: only modules the placements use and kept-trainable weights."""
    want = {n: list(s) for n, s in fingerprint.get("params", [])}
    have = {n: list(p.shape) for n, p in _base_params(model, _addin_child(model))}
    modules = {p.target.module for p in cfg.placements} | {p.source.module for p in cfg.placements}
    for name, shape in want.items():
        owner = name.rpartition(".")[0]
        if owner in modules and have.get(name) != shape:
            got = "missing" if name not in have else f"shape {tuple(have[name])}"
            raise ValueError(f"{source} does not fit this model: module '{owner}' parameter "
                             f"'{name}' is {got} here but {tuple(shape)} in the checkpoint")


# -- PEFT -------------------------------------------------------------------------------------------
def export_peft(att: Attachment, directory: str | Path) -> None:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` that ``peft.PeftModel`` loads.

    Only LoRA on ``nn.Linear`` layers can be exported; kept-trainable base weights are exported as
    PEFT ``modules_to_save`` when they cover whole modules.
    """
    from safetensors.torch import save_file

    from .addins.lora import LoRA

    if not att.attached:
        raise RuntimeError("cannot export: this attachment has been detached")
    modules = dict(att.model.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    dropouts = set()
    for key, p, addin in att.entries:
        if not isinstance(addin, LoRA) or p.method != "adapt_output":
            raise ValueError(f"PEFT export covers LoRA only; '{key}' is {type(addin).__name__}."
                             f"{p.method}")
        if not isinstance(modules[p.target.module], nn.Linear):
            raise ValueError(f"PEFT export covers LoRA on nn.Linear layers; '{p.target.module}' is a "
                             f"{type(modules[p.target.module]).__name__}")
        if p.target.module in ranks:
            raise ValueError(f"two LoRAs on '{p.target.module}' cannot be one PEFT adapter")
        prefix = f"base_model.model.{p.target.module}"
        tensors[f"{prefix}.lora_A.weight"] = _tensor(addin.lora_A)
        tensors[f"{prefix}.lora_B.weight"] = _tensor(addin.lora_B)
        ranks[p.target.module] = addin.r
        alphas[p.target.module] = addin.alpha
        dropouts.add(addin.dropout)
    if not ranks:
        raise ValueError("nothing to export: the attachment has no LoRA")
    if len(dropouts) > 1:
        raise ValueError(f"PEFT has one lora_dropout per adapter; these LoRAs use {sorted(dropouts)}")
    child = _addin_child(att.model)
    base = dict(_base_params(att.model, child))
    keep, _ = match_trainable(base, att.config.trainable)
    to_save = sorted({n.rpartition(".")[0] for n in keep})
    for module_path in to_save:
        own = [f"{module_path}.{n}" if module_path else n
               for n, _ in modules[module_path].named_parameters()]
        if not module_path or set(own) - keep:
            raise ValueError(f"PEFT saves whole modules (modules_to_save); the kept-trainable weights "
                             f"cover only part of '{module_path or 'the root'}'")
        for name in own:
            tensors[f"base_model.model.{name}"] = _tensor(base[name])
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "revision": None,
        "r": r, "lora_alpha": _num(alpha), "lora_dropout": dropouts.pop(), "bias": "none",
        "target_modules": sorted(ranks), "exclude_modules": None,
        "rank_pattern": {f"^{m}$": v for m, v in ranks.items() if v != r},
        "alpha_pattern": {f"^{m}$": _num(v) for m, v in alphas.items() if v != alpha},
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "modules_to_save": to_save or None, "layers_to_transform": None, "layers_pattern": None,
        "inference_mode": True, "lora_bias": False,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / PEFT_WEIGHTS), metadata={"format": "pt"})
    (directory / PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _pattern_value(patterns: Mapping[str, Any], path: str, default: Any) -> Any:
    """PEFT's rank/alpha pattern lookup: the first key that matches the end of ``path``."""
    import re

    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{key.lstrip('^').rstrip('$')})", path):
            return value
    return default


def from_peft(model: nn.Module, directory: str | Path, example_input: Any = None,
              **attach_kwargs: Any) -> Attachment:
    """Attach the LoRA adapter a PEFT directory holds (``adapter_config.json`` +
    ``adapter_model.safetensors``) to ``model``; returns the Attachment (merge, save, detach as usual).

    Supports ``peft_type`` LORA on Linear layers with ``bias="none"``, no DoRA/rsLoRA, plus
    ``modules_to_save`` (their weights are loaded and kept trainable). The model is untouched on error.
    """
    directory = Path(directory)
    config_path = directory / PEFT_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"no {PEFT_CONFIG} in {directory}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
    if config.get("peft_type") != "LORA":
        raise ValueError(f"only LoRA adapters can be imported; {config_path} has peft_type "
                         f"{config.get('peft_type')!r}")
    for flag in ("use_dora", "use_rslora", "fan_in_fan_out"):
        if config.get(flag):
            raise ValueError(f"{config_path}: {flag}=true is not supported")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{config_path}: bias={config.get('bias')!r} is not supported (only 'none')")
    tensors, _ = _read(directory / PEFT_WEIGHTS)
    lead = "base_model.model."
    lora: dict[str, dict[str, torch.Tensor]] = {}
    saved: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if not key.startswith(lead):
            raise ValueError(f"{directory / PEFT_WEIGHTS}: unexpected key '{key}'")
        name = key[len(lead):]
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                module, _, rest = name.partition(marker)
                if rest not in ("weight", "default.weight"):
                    raise ValueError(f"{directory / PEFT_WEIGHTS}: unexpected key '{key}'")
                lora.setdefault(module, {})[part] = t
                break
        else:
            saved[name.replace(".modules_to_save.default.", ".")] = t
    if not lora:
        raise ValueError(f"{directory / PEFT_WEIGHTS} holds no LoRA weights")
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    placements = []
    for path in lora:
        if path not in modules:
            raise ValueError(f"the adapter has LoRA weights for module '{path}', which this "
                             f"{type(model).__name__} does not have")
        if not isinstance(modules[path], nn.Linear):
            raise ValueError(f"from_peft imports LoRA on nn.Linear layers; the adapter's '{path}' is a "
                             f"{type(modules[path]).__name__} (PEFT's conv LoRA has another layout)")
    order = {name: i for i, name in enumerate(modules)}
    for path in sorted(lora, key=order.__getitem__):
        pair = lora[path]
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"the adapter's LoRA for '{path}' lacks {({'lora_A', 'lora_B'} - set(pair)).pop()}")
        r = int(pair["lora_A"].shape[0])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, path, config.get("lora_alpha", 8))
        settings: dict[str, Any] = {"r": r, "alpha": alpha}
        if config.get("lora_dropout"):
            settings["dropout"] = float(config["lora_dropout"])
        point = Point(path, "post")
        placements.append(Placement("LoRA", "adapt_output", point, point, settings))
    for name, t in saved.items():
        if name not in params:
            raise ValueError(f"the adapter saves '{name}' (modules_to_save), which this "
                             f"{type(model).__name__} does not have")
        if tuple(params[name].shape) != tuple(t.shape):
            raise ValueError(f"the adapter's '{name}' has shape {tuple(t.shape)}, the model's is "
                             f"{tuple(params[name].shape)}")
    cfg = Config(placements, sorted(saved))
    att = attach(model, cfg, example_input=example_input, **attach_kwargs)
    try:
        for key, p, addin in att.entries:
            pair = lora[p.target.module]
            for part in ("lora_A", "lora_B"):
                want = tuple(getattr(addin, part).shape)
                if tuple(pair[part].shape) != want:
                    raise ValueError(f"the adapter's {part} for '{p.target.module}' has shape "
                                     f"{tuple(pair[part].shape)}; this model's layer needs {want}")
            with torch.no_grad():
                addin.lora_A.copy_(pair["lora_A"])
                addin.lora_B.copy_(pair["lora_B"])
        with torch.no_grad():
            for name, t in saved.items():
                params[name].copy_(t)
    except BaseException:
        att.detach()
        raise
    return att


__all__ = ["export_peft", "from_peft", "load", "save_attachment"]
