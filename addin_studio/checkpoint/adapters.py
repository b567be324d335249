"""Adapter-only checkpoints (safetensors): save an Attachment, re-attach it from the file alone.

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

from ..config import Placement, parse
from ..engine import Attachment
from ..engine.freezing import match_trainable
from . import files
from .attaching import attach_filled
from .fingerprint import addin_child, base_params, check_fingerprint, check_touched, fingerprint

FORMAT = "addin_studio.adapters/1"


def _placement_json(p: Placement) -> dict[str, Any]:
    return {"addin": p.addin, "method": p.method, "source": str(p.source), "target": str(p.target),
            "settings": dict(p.settings)}


def save_attachment(att: Attachment, path: str | Path) -> None:
    """Write the add-in weights and kept-trainable base weights of ``att`` to ``path`` (safetensors)."""
    if not att.attached:
        raise RuntimeError("cannot save: this attachment has been detached")
    was_merged = att.merged
    if was_merged:  # save the base weights as they are without the folded-in updates
        att.unmerge()
    try:
        child = addin_child(att.model)
        tensors: dict[str, torch.Tensor] = {}
        for key, _, addin in att.entries:
            for name, t in addin.state_dict().items():
                tensors[f"addins.{key}.{name}"] = t
        base = dict(base_params(att.model, child))
        keep, _ = match_trainable(base, att.config.trainable)
        for name in sorted(keep):
            tensors[f"base.{name}"] = base[name]
        meta = {
            "format": FORMAT,
            "config": str(att.config),
            "placements": json.dumps([_placement_json(p) for _, p, _ in att.entries]),
            "keys": json.dumps([key for key, _, _ in att.entries]),
            "fingerprint": json.dumps(fingerprint(att.model, child)),
        }
        files.write(tensors, Path(path), meta)
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
    tensors, meta = files.read(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an Addin Studio adapter checkpoint (metadata format "
                         f"{meta.get('format')!r}, expected {FORMAT!r})")
    try:
        cfg = parse(meta["config"])
        keys = json.loads(meta["keys"])
        expected = json.loads(meta["fingerprint"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: damaged metadata ({exc})") from None
    if strict:
        check_fingerprint(model, expected, str(path))
    else:
        check_touched(model, cfg, expected, str(path))
    base = dict(base_params(model, addin_child(model)))
    base_tensors = {k[5:]: v for k, v in tensors.items() if k.startswith("base.")}
    for name, t in base_tensors.items():
        if name not in base:
            raise ValueError(f"{path}: kept-trainable weight '{name}' has no parameter in this model")
        if tuple(base[name].shape) != tuple(t.shape):
            raise ValueError(f"{path}: kept-trainable weight '{name}' has shape {tuple(t.shape)}, the "
                             f"model's is {tuple(base[name].shape)}")

    def fill(att: Attachment) -> None:
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

    return attach_filled(model, cfg, fill, base, base_tensors, addins=addins, example_input=example_input,
                         **attach_kwargs)
