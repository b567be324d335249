"""IA3's PEFT form: ``peft_type`` IA3 on ``nn.Linear`` layers, one tensor ``<layer>.ia3_l`` each —
``[out_features, 1]`` for a layer whose output is rescaled (``adapt_output``), ``[1, in_features]`` for
one of PEFT's ``feedforward_modules``, whose input is rescaled (``adapt_input``)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config import Placement, Point
from .interop import PeftEntry, PeftImport, PeftMapping
from .peft_patterns import listed_by_peft

TENSOR = "ia3_l"
_METHODS = {"post": "adapt_output", "pre": "adapt_input"}


class IA3Peft(PeftMapping):
    """IA3 <-> PEFT ``IA3Config`` (``target_modules``, ``feedforward_modules``)."""

    peft_type = "IA3"

    def export(self, entries: Sequence[PeftEntry]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        feedforward: list[str] = []
        for e in entries:
            path = e.placement.target.module
            if type(e.module) is not nn.Linear:
                raise ValueError(
                    f"PEFT export covers IA3 on nn.Linear layers; '{e.key}' is on a {type(e.module).__name__}"
                )
            if e.placement.method not in _METHODS.values() or e.addin.skip:
                raise ValueError(
                    f"PEFT's IA3 rescales a whole layer output (adapt_output) or input "
                    f"(adapt_input, its feedforward_modules); '{e.key}' is "
                    f"{e.placement.addin}.{e.placement.method}"
                    f"{f' with skip={e.addin.skip}' if e.addin.skip else ''}"
                )
            if f"{path}.{TENSOR}" in tensors:
                raise ValueError(
                    f"two IA3 vectors on '{path}' (before and after it) cannot be one PEFT adapter"
                )
            vector = e.addin.ia3_l
            if e.placement.method == "adapt_input":
                feedforward.append(path)
                tensors[f"{path}.{TENSOR}"] = vector.reshape(1, -1)
            else:
                tensors[f"{path}.{TENSOR}"] = vector.reshape(-1, 1)
        targets = sorted(name.rpartition(".")[0] for name in tensors)
        others = [t for t in targets if t not in feedforward]
        stretched = next(((f, t) for f in feedforward for t in others if t.endswith("." + f)), None)
        if stretched:
            raise ValueError(
                f"PEFT reads feedforward_modules as name endings, so '{stretched[0]}' would "
                f"also make '{stretched[1]}' (rescaled after the layer here) a feedforward "
                f"module"
            )
        return tensors, {
            "target_modules": targets,
            "feedforward_modules": sorted(feedforward),
            "exclude_modules": None,
            "fan_in_fan_out": False,
            "init_ia3_weights": True,
        }

    def claims(self, name: str) -> bool:
        return name.endswith("." + TENSOR)

    def read(
        self,
        config: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        model: nn.Module,
        addin: str,
        source: str,
    ) -> list[PeftImport]:
        feedforward = config.get("feedforward_modules") or []
        if (
            isinstance(feedforward, str)
            or not isinstance(feedforward, list)
            or not all(isinstance(f, str) for f in feedforward)
        ):
            raise ValueError(
                f"{source}: field 'feedforward_modules' must be a list of module names, got "
                f"{feedforward!r} (a regular expression is not supported)"
            )
        if config.get("fan_in_fan_out"):
            raise ValueError(
                f"{source}: fan_in_fan_out=true (transformers Conv1D layers) is not supported; "
                f"IA3 adapters import on nn.Linear layers"
            )
        targets = config.get("target_modules")
        modules = dict(model.named_modules())
        order = {path: i for i, path in enumerate(modules)}
        out = []
        for name in sorted(tensors, key=lambda n: (order.get(n[: -len(TENSOR) - 1], -1), n)):
            path = name[: -len(TENSOR) - 1]
            module = modules.get(path)
            if module is None or not path:
                raise ValueError(
                    f"{source}: tensor '{name}' is for a layer '{path}' this "
                    f"{type(model).__name__} does not have"
                )
            if type(module) is not nn.Linear:
                raise ValueError(
                    f"{source}: tensor '{name}': IA3 adapters import on nn.Linear layers; "
                    f"'{path}' is a {type(module).__name__}"
                )
            if isinstance(targets, list) and not listed_by_peft(targets, path):
                raise ValueError(
                    f"{source}: tensor '{name}' is for '{path}', which target_modules {targets} "
                    f"does not name (PEFT would not load it)"
                )
            is_ff = listed_by_peft(feedforward, path)
            t = tensors[name]
            want = (1, module.in_features) if is_ff else (module.out_features, 1)
            if tuple(t.shape) != want:
                kind = "a feedforward module's input" if is_ff else "the layer's output"
                raise ValueError(
                    f"{source}: tensor '{name}' has shape {tuple(t.shape)}; scaling {kind} needs {want}"
                )
            side = "pre" if is_ff else "post"
            point = Point(path, side)
            out.append(PeftImport(Placement(addin, _METHODS[side], point, point, {}), {TENSOR: t.flatten()}))
        if not out:
            raise ValueError(f"{source} holds no {TENSOR} tensor")
        return out
